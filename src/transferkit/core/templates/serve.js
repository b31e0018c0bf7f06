// The serve page: images dropped or chosen are POSTed to /predict; each answer becomes a card.
// Text from the server is set with textContent only, never parsed as HTML.
const TOP_K = Number(document.body.dataset.topK);  // the server's --top-k, written into the page
const input = document.getElementById('files'), drop = document.getElementById('drop');
const results = document.getElementById('results'), status = document.getElementById('status');
input.addEventListener('change', function () { send(Array.from(input.files)); input.value = ''; });
['dragenter', 'dragover'].forEach(function (e) { drop.addEventListener(e, function (ev) { ev.preventDefault(); drop.classList.add('over'); }); });
['dragleave', 'drop'].forEach(function (e) { drop.addEventListener(e, function (ev) { ev.preventDefault(); drop.classList.remove('over'); }); });
drop.addEventListener('drop', function (ev) { send(Array.from(ev.dataTransfer.files)); });

function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }

async function send(files) {
  if (!files.length) return;
  const form = new FormData();
  files.forEach(function (f) { form.append('files', f, f.name); });
  status.className = ''; status.textContent = 'classifying ' + files.length + ' image' + (files.length > 1 ? 's' : '') + '\u2026';
  let reply, body;
  try {
    reply = await fetch('predict?top_k=' + TOP_K, {method: 'POST', body: form});
    body = await reply.json();
  } catch (err) { status.className = 'error'; status.textContent = 'error: ' + err; return; }
  if (!reply.ok) { status.className = 'error'; status.textContent = 'error: ' + body.error; return; }
  status.textContent = '';
  body.slice().reverse().forEach(function (r, i) { results.prepend(card(r, files[files.length - 1 - i])); });
}

function card(result, file) {
  const box = el('div', 'result'), img = el('img'), text = el('div');
  img.src = URL.createObjectURL(file); img.alt = result.image;
  const best = result.top[0];
  const prediction = el('div', 'prediction', best.label); prediction.dataset.label = best.label;
  text.append(prediction, el('div', 'name', result.image));
  result.top.forEach(function (t) {
    const row = el('div', 'row'), bar = el('div', 'bar'), fill = el('span');
    fill.style.width = (100 * t.probability).toFixed(1) + '%'; bar.append(fill);
    row.append(el('span', 'label', t.label), bar, el('span', 'p', (100 * t.probability).toFixed(1) + '%'));
    text.append(row);
  });
  box.append(img, text);
  return box;
}
