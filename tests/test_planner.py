"""The planner's choices on synthetic cost and accuracy tables, durations, and the cores a run uses."""

import os

import pytest

from transferkit.core import throughput
from transferkit.core.errors import TransferkitError
from transferkit.plan import planner
from transferkit.plan.planner import LAST_GROUPS_SCHEDULE, WHOLE_NETWORK_SCHEDULE, Candidate, CostModel, DataSizes, choose, with_user_options
from transferkit.training.options import format_duration, parse_duration, resolve
from transferkit.core.throughput import Workload, cpu_budget, split_cores

# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("20m", 1200), ("2h", 7200), ("1h30m", 5400), ("1.5m", 90), (" 20 m ", 1200), ("2H", 7200)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, says", [("90", "write 90s, 90m or 90h"), ("abc", "such as 90s, 20m, 2h"), ("", "such as 90s"), ("20 minutes", "such as 90s"),
                                        ("5m5m", "such as 90s"), ("-3s", "such as 90s"), ("0s", "above zero"), ("1d", "such as 90s")])  # fmt: skip
def test_parse_duration_errors_say_what_to_write(text, says):
    with pytest.raises(TransferkitError) as err:
        parse_duration(text)
    assert says in str(err.value) and "\n" not in str(err.value) and "--time-budget" in str(err.value)


@pytest.mark.parametrize("seconds", [1, 59, 60, 95, 3600, 5461])
def test_format_duration_reads_back(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


# --------------------------------------------------------------------------- choosing on synthetic tables


def cand(strategy, cost, accuracy, **options):
    return Candidate(resolve({"strategy": strategy, **options}), cost, accuracy)


def test_the_more_accurate_recipe_is_chosen_when_both_fit():
    cheap, better = cand("linear", 30, 0.90), cand("finetune", 300, 0.95, unfreeze="2", cache_frozen=True)
    plan = choose([cheap, better], budget_s=600)
    assert plan.chosen is better and plan.fits
    plan = choose([better, cheap], budget_s=600)
    assert plan.chosen is better


def test_equally_accurate_recipes_go_to_the_cheaper():
    a, b = cand("linear", 100, 0.9), cand("mlp", 40, 0.9)
    assert choose([a, b], budget_s=600).chosen is b


def test_the_budget_is_respected_and_what_more_time_buys_is_said():
    cheap, better = cand("linear", 30, 0.90), cand("finetune", 300, 0.95)
    plan = choose([cheap, better], budget_s=200)
    assert plan.chosen is cheap and plan.chosen.cost_s * planner.SAFETY <= plan.left_s
    assert any("--time-budget" in note and "95.0%" in note for note in plan.notes)
    # time already spent on probing counts against the budget
    assert choose([cheap, better], budget_s=500, spent_s=100).chosen is better  # 400 s left: 300 s with the margin fit
    assert choose([cheap, better], budget_s=500, spent_s=200).chosen is cheap  # 300 s left: not with the margin


def test_nothing_fits_gives_the_cheapest_with_a_note_that_says_which_budget():
    a, b = cand("linear", 120, 0.9), cand("finetune", 900, 0.97)
    plan = choose([b, a], budget_s=60)
    assert plan.chosen is a and not plan.fits
    note = plan.notes[0]
    assert "nothing fits" in note and "linear" in note
    needed = parse_duration(note.split("--time-budget ")[1].split()[0])
    assert needed >= a.cost_s * planner.SAFETY
    assert choose([a], budget_s=needed).fits


def test_no_candidates_is_one_line_that_says_what_to_do():
    with pytest.raises(TransferkitError, match="drop one of them"):
        choose([], budget_s=60)


def test_plan_table_and_command():
    cheap, better = cand("linear", 30, 0.9, image_size=128), cand("finetune", 300, 0.95, unfreeze="2", cache_frozen=True, image_size=192, epochs=2)
    plan = choose([cheap, better], budget_s=600)
    rows = plan.table()
    assert [r["chosen"] for r in rows] == [True, False] and rows[0]["fits"] and rows[0]["recipe"].startswith("finetune")
    command = plan.command("cifar10")
    assert command.startswith("transferkit train cifar10 --strategy finetune") and "--cache-frozen" in command
    assert "--unfreeze 2" in command and "--image-size 192" in command and "--epochs 2" in command
    assert "--lr" not in command  # only what differs from the strategy's defaults


# --------------------------------------------------------------------------- the user's options stay fixed


def searched_recipes(models=("efficientnet_lite0", "pixels")) -> list[dict]:
    """Recipes of the kinds auto searches: heads at two sizes (with and without flip TTA), the last
    groups and the whole network fine-tuned, and on raw pixels a linear model and an RBF SVM."""
    recipes = []
    for model in models:
        if model == "pixels":
            recipes += [{"strategy": "linear", "model": model}, {"strategy": "svm", "model": model, "kernel": "rbf"}]
            continue
        for size in (64, 128):
            recipes += [{"strategy": "linear", "model": model, "image_size": size}, {"strategy": "linear", "model": model, "image_size": size, "flip_tta": True},
                        {"strategy": "mlp", "model": model, "image_size": size},
                        {**LAST_GROUPS_SCHEDULE, "unfreeze": "2", "model": model, "image_size": size, "epochs": 3, "augment": "light"}]  # fmt: skip
        recipes.append({**WHOLE_NETWORK_SCHEDULE, "model": model, "image_size": 64, "epochs": 3, "augment": "light"})
    return recipes


def test_user_options_are_fixed_in_every_recipe():
    searched = searched_recipes()
    given = {"strategy": "auto", "image_size": 96, "epochs": 5, "seed": 3, "layer": None}
    kept, dropped = with_user_options(searched, given)
    assert kept
    for opts in kept:
        assert opts.seed == 3
        assert opts.image_size == 96
        if opts.strategy in ("mlp", "frozen", "finetune", "scratch"):
            assert opts.epochs == 5
    # linear and svm do not use --epochs: a recipe that would ignore the user's value is dropped, not run without it
    assert not [o for o in kept if o.strategy in ("linear", "svm")]
    assert any("does not use --epochs" in line for line in dropped)
    kept, dropped = with_user_options(searched, {"image_size": 96})
    assert kept and {o.image_size for o in kept} == {96} and "pixels" not in {o.model for o in kept}
    assert any("pixels takes only 16 px" in line for line in dropped)


def test_a_strategy_the_user_set_means_exactly_that_strategy():
    searched = searched_recipes(["efficientnet_lite0"])
    kept, _ = with_user_options(searched, {"strategy": "finetune", "augment": "none"})
    assert kept and {o.strategy for o in kept} == {"finetune"} and {o.augment for o in kept} == {"none"}
    # recipes that differ only in an option the user fixed merge
    kept_sizes, _ = with_user_options(searched, {"strategy": "linear", "image_size": 64})
    assert len({(o.layer, o.flip_tta) for o in kept_sizes}) == len(kept_sizes)


# synthetic images/s per workload kind: extraction 100/s, a whole-network step 10/s, two cached groups 80/s
RATES = {"forward from images": 100.0, "forward from group": 400.0, "train all groups": 10.0, "train 2 groups from group": 80.0, "train 1 groups from group": 150.0,
         "train 2 groups from images": 30.0}  # fmt: skip


def synthetic_rate(workload: Workload) -> float:
    key = workload.key
    return next(rate for kind, rate in sorted(RATES.items(), key=lambda kv: -len(kv[0])) if kind in key)


def test_cost_model_prices_each_strategy_from_the_rates():
    model = CostModel(synthetic_rate, overhead_s=0.0, overhead_s_per_image=0.0, head_fit_s_per_image=0.0)
    sizes = DataSizes(train=1000, val=200, test=300)
    linear = model.cost(resolve({"strategy": "linear"}), sizes)
    assert linear == pytest.approx(1500 / 100)
    assert model.cost(resolve({"strategy": "linear", "flip_tta": True}), sizes) == pytest.approx(2 * linear)
    whole = model.cost(resolve({"strategy": "finetune", "epochs": 3, "head_epochs": 0}), sizes)
    assert whole == pytest.approx(3 * 1000 / 10 + 3 * 200 / 100 + 300 / 100)
    cached = model.cost(resolve({"strategy": "finetune", "epochs": 3, "head_epochs": 0, "unfreeze": "2", "cache_frozen": True}), sizes)
    assert cached == pytest.approx(1200 / 100 + 3 * 1000 / 80 + 3 * 200 / 400 + 300 / 100)
    cached_head_first = model.cost(resolve({"strategy": "finetune", "epochs": 3, "head_epochs": 1, "unfreeze": "2", "cache_frozen": True}), sizes)
    assert cached_head_first == pytest.approx(1200 / 100 + 1000 / 400 + 2 * 1000 / 80 + 3 * 200 / 400 + 300 / 100)
    head_first = model.cost(resolve({"strategy": "finetune", "epochs": 3, "head_epochs": 1}), sizes)
    assert head_first == pytest.approx(1000 / 100 + 2 * 1000 / 10 + 3 * 200 / 100 + 300 / 100)
    # decoding: without workers it adds to every image from files; with enough workers it hides behind the network
    slow_decode = CostModel(synthetic_rate, decode_s=0.02, overhead_s=0.0, overhead_s_per_image=0.0, head_fit_s_per_image=0.0)
    assert slow_decode.cost(resolve({"strategy": "linear"}), sizes) == pytest.approx(1500 * (0.01 + 0.02))
    hidden = CostModel(synthetic_rate, decode_s=0.02, workers=2, overhead_s=0.0, overhead_s_per_image=0.0, head_fit_s_per_image=0.0)
    assert hidden.cost(resolve({"strategy": "linear"}), sizes) == pytest.approx(linear)


def test_planner_on_a_synthetic_table_respects_budget_and_user_options():
    """recipes -> the user's options -> costs from a rate table -> accuracies from a table -> choice."""
    expected = {"linear": 0.82, "svm": 0.80, "mlp": 0.83, "frozen": 0.84, "finetune": 0.93, "scratch": 0.7}
    model = CostModel(synthetic_rate)
    sizes = DataSizes(train=4000, val=1000, test=1000)
    searched = searched_recipes()
    for given, budget in (({}, 120), ({}, 3600), ({"image_size": 64}, 3600), ({"strategy": "linear"}, 3600), ({"augment": "none", "epochs": 2}, 900)):
        kept, _ = with_user_options(searched, given)
        candidates = [Candidate(o, model.cost(o, sizes), expected[o.strategy] + (0.01 if o.model == "pixels" else 0.0)) for o in kept]
        plan = choose(candidates, budget)
        assert plan.fits and plan.chosen.cost_s * planner.SAFETY <= budget
        for name, value in given.items():
            assert getattr(plan.chosen.options, name) == value
        better = [c for c in candidates if c.accuracy > plan.chosen.accuracy]
        assert all(c.cost_s * planner.SAFETY > budget for c in better)
    # an hour buys a fine-tune; two minutes do not
    kept, _ = with_user_options(searched, {})
    candidates = [Candidate(o, model.cost(o, sizes), expected[o.strategy]) for o in kept]
    assert choose(candidates, 3600).chosen.options.strategy == "finetune"
    assert choose(candidates, 120).chosen.options.strategy in ("linear", "mlp", "svm")


# --------------------------------------------------------------------------- expected accuracy


def test_extrapolation_recovers_a_power_law_and_never_falls():
    sizes = [100, 200, 400]
    accuracies = [1 - 0.3 * (n / 100) ** -0.5 for n in sizes]
    assert planner.extrapolate_accuracy(sizes, accuracies, 1600) == pytest.approx(1 - 0.3 * 16**-0.5)
    assert planner.extrapolate_accuracy([100, 200, 400], [0.9, 0.8, 0.7], 10_000) == pytest.approx(0.9)  # noise that falls: the best measured
    assert planner.extrapolate_accuracy([100], [0.7], 10_000) == pytest.approx(0.7)
    assert planner.extrapolate_accuracy([100, 400], [0.6, 0.8], 200) == pytest.approx(0.6 + 0.2 / 3)
    assert planner.extrapolate_accuracy([100, 200], [0.99, 1.0], 10**6) == 1.0
    with pytest.raises(ValueError, match="as many sizes as accuracies"):
        planner.extrapolate_accuracy([100, 200], [0.5], 400)


# --------------------------------------------------------------------------- successive halving


# --------------------------------------------------------------------------- cores and throughput


def test_cpu_budget_is_the_affinity_else_the_core_count(monkeypatch):
    assert cpu_budget() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert cpu_budget() == 3
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert cpu_budget() == 6


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 8, 16, 64])
@pytest.mark.parametrize("ratio", [None, 0.0, 0.05, 0.3, 1.0, 4.0])
@pytest.mark.parametrize("gpu", [False, True])
def test_threads_and_workers_never_exceed_the_cores(cores, ratio, gpu):
    split = split_cores(cores, decode_s=None if ratio is None else ratio, network_s=None if ratio is None else 1.0, gpu=gpu)
    assert split.torch_threads >= 1 and split.workers >= 0
    assert split.torch_threads + split.workers <= cores


def test_split_follows_the_measured_decoding_share():
    assert split_cores(2) == throughput.CoreSplit(2, 0)  # cheap decoding: both cores to the network
    assert split_cores(2, decode_s=1.0, network_s=1.0).workers == 1  # decoding as dear as the network
    assert split_cores(16).workers == 2
    assert split_cores(16, decode_s=1.0, network_s=1.0).workers == 8
    assert split_cores(8, n_batches=1) == throughput.CoreSplit(8, 0)  # one batch: no workers to start
    assert split_cores(8, gpu=True) == throughput.CoreSplit(1, 7)
    assert split_cores(1, decode_s=5.0, network_s=1.0) == throughput.CoreSplit(1, 0)
    assert split_cores(None) == split_cores(cpu_budget())


def test_throughput_is_measured_once_per_machine_and_kept(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(throughput, "measure", lambda workload, seconds: calls.append(workload) or 123.0)
    work = Workload("lenet", 32, 16, trained="all")
    table = throughput.ThroughputTable(tmp_path, machine="machine A")
    assert table.rate(work) == 123.0 and table.rate(work) == 123.0 and len(calls) == 1
    assert throughput.ThroughputTable(tmp_path, machine="machine A").rate(work) == 123.0 and len(calls) == 1  # kept on disk
    assert throughput.ThroughputTable(tmp_path, machine="machine B").rate(work) == 123.0 and len(calls) == 2  # another machine measures its own
    assert table.observe(work, images=500, seconds=10.0) == 50.0
    assert table.rate(work) == 50.0 and table.entries()[work.key]["how"] == "observed"
    assert (tmp_path / "throughput.json").is_file()
    with pytest.raises(ValueError, match="above 0"):
        table.observe(work, images=0, seconds=1.0)


def test_machine_key_names_cores_and_torch():
    import torch

    key = throughput.machine_key()
    assert f"{cpu_budget()} cores" in key and torch.__version__ in key


@pytest.mark.parametrize("workload", [Workload("lenet", 32, 8), Workload("lenet", 32, 8, trained="all"), Workload("lenet", 32, 8, trained=1, from_group=2),
                                      Workload("pixels", 16, 8)])  # fmt: skip
def test_measure_runs_each_workload(workload):
    assert throughput.measure(workload, seconds=0.05) > 0


def test_measure_refuses_what_cannot_train():
    with pytest.raises(TransferkitError, match="no layers to train"):
        throughput.measure(Workload("pixels", 16, 8, trained=1), seconds=0.05)
    with pytest.raises(TransferkitError, match="from_group must be 1..1"):
        throughput.measure(Workload("lenet", 32, 8, trained=2, from_group=2), seconds=0.05)
