// Click a column header of a table.sortable to sort its rows by that column, again to reverse.
// A cell's data-v, where it has one, is the number it sorts by; else its text does.
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
    var asc = th.dataset.order !== 'asc';
    table.querySelectorAll('th').forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = asc ? 'asc' : 'desc';
    function key(row) { var td = row.cells[col]; return td.dataset.v !== undefined ? parseFloat(td.dataset.v) : td.textContent.toLowerCase(); }
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    }).forEach(function (row) { body.appendChild(row); });
  });
});
