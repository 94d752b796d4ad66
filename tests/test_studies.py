"""The studies: each runs in quick mode and writes the promised files and columns; their helpers
(group rows, ratio intervals, the noise-corrected SNR, the README block) are right."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import gradnoise as gn
from gradnoise.analysis import cli, studies
from gradnoise.analysis.studies import base as study_base
from gradnoise.analysis.studies import cli as study_cli
from gradnoise.analysis.fit import FIT_COLUMNS
from gradnoise.analysis.studies.iwae_snr import Moments

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STUDY_TABLES = {
    "vae-vs-reinforce": {"ratios.csv": ["checkpoint", "budget", "estimator", "ratio", "ratio_ci_low", "ratio_ci_high"]},
    "iwae-snr": {
        "snr.csv": ["problem", "estimator", "group", "K", "snr", "snr_ci_low", "snr_ci_high", "log_snr_se",
                    "at_noise_floor", "signal_from", "snr_own", "snr_uncorrected"],
        "snr_fits.csv": ["problem", "estimator", "group", "K_from", "d", "d_ci_low", "d_ci_high", "n_points"],
    },
    "no-single-winner": {
        "per_sample.csv": ["cost", "k", "param", "estimator", "budget", "per_sample_variance", "ci_low", "ci_high", "rank"],
        "ranking.csv": ["cost", "k", "param", "ranking", "winner", "pathwise_over_best_sf", "ratio_ci_low",
                        "ratio_ci_high", "verdict"],
    },
    "measure-valued": {
        "per_sample.csv": ["cost", "k", "param", "estimator", "beta", "cost_evals", "per_sample_variance", "ci_low",
                           "ci_high", "exact_variance", "exact_zero", "z_vs_exact", "rank"],
        "ranking.csv": ["cost", "k", "param", "ranking", "winner", "mv_below_sf", "mv_above_sf", "mv_over_sf"],
    },
    "discrete-estimators": {
        "ratios.csv": ["checkpoint", "evaluations", "estimator", "budget", "ratio", "ratio_ci_low", "ratio_ci_high"],
        "bias.csv": ["checkpoint", "evaluations", "estimator", "budget", "relative_bias", "bias_z"],
    },
}


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Every study in quick mode, once per test session: ``{name: (out_dir, outcome)}``."""
    runs = {}
    for name in studies.study_names():
        out = tmp_path_factory.mktemp(name)
        runs[name] = (out, studies.run_study(name, out, studies.Config(quick=True, seed=0)))
    return runs


def test_the_studies_are_registered():
    assert studies.study_names() == ["vae-vs-reinforce", "iwae-snr", "no-single-winner", "measure-valued",
                                     "discrete-estimators", "toy-training", "discrete-training"]
    with pytest.raises(KeyError, match="valid studies: vae-vs-reinforce"):
        studies.get_study("no-such-study")


@pytest.mark.parametrize("name", list(STUDY_TABLES), ids=list(STUDY_TABLES))
def test_quick_study_writes_the_promised_files(quick_runs, name):
    out, outcome = quick_runs[name]
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns) == gn.COLUMNS
    assert len(results) > 0 and results["variance"].gt(0).all()
    assert (results["variance_ci_low"] <= results["variance"]).all()
    assert (results["variance"] <= results["variance_ci_high"]).all()
    fits = pd.read_csv(out / "fits.csv")
    assert list(fits.columns) == FIT_COLUMNS and len(fits) > 0
    for table, columns in STUDY_TABLES[name].items():
        df = pd.read_csv(out / table)
        assert set(columns) <= set(df.columns), (table, set(columns) - set(df.columns))
        assert len(df) > 0
    assert outcome.figures
    for figure in outcome.figures:
        data = (out / figure).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    text = (out / "study.md").read_text()
    for section in ("## Claim", "## Verdict", "## Method", "## Results"):
        assert section in text
    assert outcome.claim in text and all(line in text for line in outcome.headline)
    assert f"Wall time: {outcome.wall_seconds:.1f} s" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["name"] == name and summary["quick"] is True and summary["headline"] == outcome.headline
    assert summary["held"] in (True, False, None) and summary["wall_seconds"] > 0


@pytest.mark.parametrize("name, tables", [
    ("toy-training", {"reached.csv": ["problem", "estimator", "seeds", "reached"], "tests.csv": ["part", "p", "p_holm"]}),
    ("discrete-training", {"tests.csv": ["form", "comparison", "difference", "p", "p_holm"]}),
])
def test_training_studies_write_their_runs_tests_and_figures(quick_runs, name, tables):
    from gradnoise.analysis.studies import discrete_training, toy_training

    out, outcome = quick_runs[name]
    runs = pd.read_csv(out / "train.csv")
    assert set(gn.TRAIN_COLUMNS) <= set(runs.columns) and (runs["objective_se"] == 0).all()
    module = toy_training if name == "toy-training" else discrete_training
    assert set(runs["estimator"]) == set(module.ESTIMATORS)
    if name == "discrete-training":      # the claim's estimators again in the papers' form
        stopped = runs[runs["problem"].str.contains("score_term=stopped")]
        assert set(stopped["estimator"]) == set(discrete_training.PAPER_FORM)
    # equal evaluations per step: every estimator has spent the same at every recorded step
    assert runs.groupby("step")["cost_evals"].nunique().eq(1).all()
    for table, columns in tables.items():
        df = pd.read_csv(out / table)
        assert set(columns) <= set(df.columns) and len(df) > 0
    for figure in outcome.figures:
        assert (out / figure).read_bytes().startswith(PNG_MAGIC)
    text = (out / "study.md").read_text()
    assert all(section in text for section in ("## Claim", "## Verdict", "## Method", "## Results"))
    assert outcome.verdict_text in text and "results.csv" not in text


def test_toy_training_part_3_runs_single_sample_estimators_and_tests_them_paired(quick_runs):
    """Part 3 (Grathwohl et al. 2018, Fig. 1): reinforce, rebar, relax at N = 1 sample per step, so
    1, 3, 3 evaluations per step; every recorded point has all three variances at the same
    parameters; the six paired variance tests and two reach tests are computed and Holm-corrected."""
    from gradnoise.analysis.studies import toy_training

    out, outcome = quick_runs["toy-training"]
    single = pd.read_csv(out / "train-single.csv")
    assert set(single["estimator"]) == set(toy_training.SINGLE_SAMPLE) and set(single["budget"]) == {1}
    assert set(single["problem"]) == {"bernoulli-toy:t=0.499,theta=0"}
    sizes = toy_training.SINGLE_SIZES[True]
    per_step = single[single["step"] == sizes.steps].groupby("estimator")["cost_evals"].unique()
    assert {e: list(v) for e, v in per_step.items()} == {"reinforce": [sizes.steps], "rebar": [3 * sizes.steps],
                                                         "relax": [3 * sizes.steps]}
    for est in toy_training.SINGLE_SAMPLE:   # the three variances at every point of every trajectory
        v = toy_training.variance_of(single, est)
        assert v.notna().all() and (v > 0).all()
    tests = pd.read_csv(out / "tests.csv")
    part3 = tests[tests["part"] == 3]
    variance = part3[part3["comparison"].str.startswith("Var(relax) < Var(")]
    assert len(variance) == 6 and set(variance["trajectory"]) == set(toy_training.SINGLE_SAMPLE)
    assert set(variance["other"]) == {"reinforce", "rebar"}
    assert (variance["seeds"] == sizes.seeds).all()        # step 0 (sigma = 1/2) is compared in every seed
    rows = len(single) // len(toy_training.SINGLE_SAMPLE)
    assert (variance["points"] + variance["points_at_optimum"] + variance["points_not_finite"] == rows).all()
    assert ((variance["ratio_ci_low"] < variance["ratio"]) & (variance["ratio"] < variance["ratio_ci_high"])).all()
    assert len(part3) == 8 and part3["p"].between(0, 1).all()
    # part 3 is its own Holm family: parts 1-2's adjusted p-values are those of their own tests
    first = tests[tests["part"] < 3]
    np.testing.assert_allclose(first["p_holm"], toy_training.train_report.holm(first["p"].to_numpy()))
    np.testing.assert_allclose(part3["p_holm"], toy_training.train_report.holm(part3["p"].to_numpy()))
    # the descriptive table by sigma(theta) covers exactly the compared points
    by_sigma = toy_training.variance_by_sigma(single)
    assert by_sigma.groupby("other")["points"].sum().to_dict() == variance.groupby("other")["points"].sum().to_dict()
    assert "Var(relax) / Var(other) by sigma(theta)" in (out / "study.md").read_text()
    reached = pd.read_csv(out / "reached.csv")
    assert set(reached.loc[reached["part"] == "3", "estimator"]) == set(toy_training.SINGLE_SAMPLE)
    assert set(outcome.details["parts"]) == {1, 2, 3} and outcome.held == all(outcome.details["parts"].values())
    assert any(line.startswith("part 3 (Grathwohl") for line in outcome.headline)
    assert set(toy_training.SINGLE_FIGURES) <= set(outcome.figures)


def test_toy_training_part_3_variance_test_catches_a_noisier_relax():
    """The paired test can fail: rows where relax's variance is 4x the others' give ratios near 4,
    p near 1, and part 3 does not hold; where it is 1/4 of theirs it holds (given the reach). Points
    past the optimum (sigma(theta) < REACHED) are not compared."""
    from gradnoise.analysis.studies import toy_training

    rng = np.random.default_rng(0)
    rows = []
    for driver in toy_training.SINGLE_SAMPLE:
        for seed in range(6):
            for step in (0, 50, 100):
                row = {"problem": "bernoulli-toy:t=0.499,theta=0", "estimator": driver, "seed": seed, "step": step,
                       "steps": 100, "cost_evals": step * (1 if driver == "reinforce" else 3),
                       "param:logits[0]": -5.0 if step == 100 else 0.0}
                for est in toy_training.SINGLE_SAMPLE:
                    value = 0.01 * np.exp(rng.normal(0, 0.1)) * (4.0 if est == "relax" else 1.0)
                    row["variance" if est == driver else f"basket:{est}:variance"] = value
                rows.append(row)
    noisy = pd.DataFrame(rows)
    held, _, tests = toy_training.single_sample_judge(noisy)
    variance = tests[tests["comparison"].str.startswith("Var(")]
    assert not held and (variance["ratio"] > 3).all() and (variance["p"] > 0.99).all()
    # the last step (sigma(theta) = 0.007, past the optimum threshold) is left out of every comparison
    assert (variance["points_at_optimum"] == 6).all() and (variance["points"] == 12).all()
    quiet = noisy.copy()
    for column in ("variance", "basket:relax:variance"):   # relax's variance, wherever it is recorded
        is_relax = (quiet["estimator"] == "relax") if column == "variance" else quiet[column].notna()
        quiet.loc[is_relax, column] /= 16
    held, _, tests = toy_training.single_sample_judge(quiet)
    assert held and (tests.loc[tests["comparison"].str.startswith("Var("), "ratio"] < 0.3).all()


def test_discrete_training_runs_rebar_and_relax_at_equal_evaluations(quick_runs):
    """The B = 12 arm: rebar and relax at N = 4, arm and disarm at N = 6 pairs, reinforce-loo at
    N = 12, every estimator with the same evaluations at every step; six Welch tests, Holm."""
    from gradnoise.analysis.studies import discrete_training

    out, outcome = quick_runs["discrete-training"]
    equal = pd.read_csv(out / "train-equal-evals.csv")
    budgets = equal.groupby("estimator")["budget"].unique().map(list).to_dict()
    assert budgets == {"rebar": [4], "relax": [4], "arm": [6], "disarm": [6], "reinforce-loo": [12]}
    assert equal.groupby("step")["cost_evals"].nunique().eq(1).all()
    last = equal["step"].max()
    assert set(equal.loc[equal["step"] == last, "cost_evals"]) == {discrete_training.EQUAL_EVALS * last}
    assert (equal["objective_se"] == 0).all() and not equal["problem"].str.contains("score_term").any()
    tests = pd.read_csv(out / "tests-equal-evals.csv")
    assert len(tests) == 6 and set(tests["estimator"]) == {"rebar", "relax"}
    assert set(tests["other"]) == set(discrete_training.BASELINES)
    np.testing.assert_allclose(tests["p_holm"], discrete_training.train_report.holm(tests["p"].to_numpy()))
    assert set(tests["result"]) <= {"lower", "higher", "not significant"}
    assert ((tests["result"] == "not significant") == (tests["p_holm"] >= discrete_training.ALPHA)).all()
    assert "REBAR and RELAX at equal evaluations (B = 12" in outcome.verdict_text
    assert discrete_training.EQUAL_FIGURE in outcome.figures


def test_vae_vs_reinforce_covers_every_checkpoint_budget_and_estimator(quick_runs):
    out, _ = quick_runs["vae-vs-reinforce"]
    results = pd.read_csv(out / "results.csv")
    enc = results[results["param"] == "encoder"]
    assert set(enc["estimator"]) == {"reinforce", "reinforce-loo", "reinforce-optimal", "reparam"}
    # one encoder row per checkpoint x estimator x budget; encoder tensors summed into the group
    assert len(enc) == len(enc[["problem", "estimator", "budget"]].drop_duplicates())
    assert {gn.parse_spec(p)[1]["checkpoint"] for p in enc["problem"]} == {"start", "end"}
    tensors = results[results["param"].str.startswith("encoder.")]
    summed = tensors.groupby(["problem", "estimator", "budget"])["variance"].sum()
    group = enc.set_index(["problem", "estimator", "budget"])["variance"]
    np.testing.assert_allclose(group.loc[summed.index], summed, rtol=1e-9)
    ratios = pd.read_csv(out / "ratios.csv")
    assert ((ratios["ratio_ci_low"] < ratios["ratio"]) & (ratios["ratio"] < ratios["ratio_ci_high"])).all()
    assert len(ratios) == 3 * len(enc) // 4


def test_iwae_snr_fits_both_groups_of_both_problems(quick_runs):
    out, outcome = quick_runs["iwae-snr"]
    snr = pd.read_csv(out / "snr.csv")
    assert {p.split(":")[0] for p in snr["problem"]} == {"linear-gaussian-vae", "digits-vae"}
    assert set(snr["group"]) == {"encoder", "decoder"} and set(snr["estimator"]) == {"iwae", "iwae-dreg"}
    assert sorted(set(snr["K"])) == [1, 10, 100]
    fits = pd.read_csv(out / "snr_fits.csv")
    assert set(fits["K_from"]) == {1, 10}
    assert len(fits) == 2 * 2 * 2 * 2          # problems x estimators x groups x fit ranges
    # the claim's direction is visible even in quick mode on the linear-Gaussian model
    lg = fits[fits["problem"].str.startswith("linear-gaussian-vae") & (fits["K_from"] == 1)].set_index(["estimator", "group"])
    assert lg.loc[("iwae", "encoder"), "d_ci_high"] < 0 < lg.loc[("iwae", "decoder"), "d_ci_low"]


def test_no_single_winner_ranks_every_cost_k_and_param(quick_runs):
    out, _ = quick_runs["no-single-winner"]
    per_sample = pd.read_csv(out / "per_sample.csv")
    assert set(per_sample["cost"]) == {"gaussian-quadratic", "gaussian-exp", "gaussian-cos"}
    assert (per_sample.loc[per_sample["estimator"] == "reinforce-loo", "budget"] == 2).all()
    assert (per_sample.loc[per_sample["estimator"] != "reinforce-loo", "budget"] == 1).all()
    ranking = pd.read_csv(out / "ranking.csv")
    assert len(ranking) == 3 * 2 * 2           # costs x ks x params
    assert set(ranking["verdict"]) <= {"pathwise wins", "score function wins", "not significant"}
    # at k = 10 the cosine cost's pathwise gradient (variance ~ k^2/2) loses by far
    cos = ranking[(ranking["cost"] == "gaussian-cos") & (ranking["k"] == 10)]
    assert (cos["verdict"] == "score function wins").all()


def test_measure_valued_study_measures_what_quadrature_says(quick_runs):
    """Every cost x k x parameter x estimator is there, with its exact variance, and the measured
    variances agree with the exact ones (|z| < 4 where the exact variance is not zero)."""
    out, outcome = quick_runs["measure-valued"]
    table = pd.read_csv(out / "per_sample.csv")
    assert len(table) == 3 * 2 * 2 * 4
    assert set(table["estimator"]) == {"reinforce", "reinforce-delta", "reparam", "measure-valued"}
    assert table.groupby(["cost", "k", "param"]).size().eq(4).all()
    assert set(table.loc[table["estimator"] == "measure-valued", "cost_evals"]) == {4}
    assert table.loc[table["estimator"] == "reinforce-delta", "beta"].notna().all()
    nonzero = table[~table["exact_zero"]]
    assert nonzero["z_vs_exact"].abs().max() < 4
    assert table.loc[table["exact_zero"], "estimator"].isin(["reinforce-delta", "measure-valued"]).all()
    assert outcome.verdict_text.startswith(("held", "did not hold"))
def test_discrete_estimators_compare_at_equal_evaluations(quick_runs):
    out, outcome = quick_runs["discrete-estimators"]
    enc = pd.read_csv(out / "results.csv").query("param == 'encoder'")
    stopped = enc["problem"].str.contains("score_term=stopped")
    assert set(enc.loc[~stopped, "estimator"]) == {"reinforce-loo", "vimco", "arm", "disarm", "gumbel-softmax",
                                                   "straight-through"}
    assert set(enc.loc[stopped, "estimator"]) == {"reinforce-loo", "arm", "disarm"}
    for evals, g in enc.groupby("cost_evals"):
        assert len(g) == (6 + 3) * 2                             # every estimator at both checkpoints
        budgets = dict(zip(g["estimator"], g["budget"]))
        assert budgets["arm"] == budgets["disarm"] == evals // 2 and budgets["reinforce-loo"] == evals
    assert set(enc.loc[enc["estimator"] == "vimco", "truth_kind"]) == {"oracle"}
    assert set(enc.loc[enc["estimator"] != "vimco", "truth_kind"]) == {"enumeration"}
    ratios = pd.read_csv(out / "ratios.csv")
    assert "disarm" not in set(ratios["estimator"]) and len(ratios) == (5 + 2) * 2 * 2
    assert set(ratios["form"]) == {"full", "stopped"}
    assert outcome.verdict_text.startswith("held" if outcome.held else "did not hold")


def test_group_rows_match_the_engine_and_statistics():
    problem = gn.make_problem("linear-gaussian-vae:d=3")
    estimator = gn.get_estimator("iwae")
    rows, estimates, _ = study_base.cell_rows(problem, estimator, 4, 60, 5, {"encoder": ["A", "b"]})
    engine_rows = gn.measure_cell(problem, estimator, 4, 60, 5)
    for mine, theirs in zip(rows, engine_rows):
        for column in gn.COLUMNS:
            if column != "seconds_per_estimate":
                assert mine[column] == theirs[column], column
    group = rows[-1]
    assert group["param"] == "encoder" and group["coords"] == 9 + 3
    assert group["variance"] == pytest.approx(rows[1]["variance"] + rows[2]["variance"], rel=1e-12)


def test_a_studys_grid_is_checked_as_a_sweeps_grid():
    """:func:`study_base.grid` keeps exactly the cells :func:`gradnoise.engine.cells` keeps (only a
    declared not-applicable cell is left out), in the same order, with its own budgets per estimator."""
    toy, quad = gn.make_problem("bernoulli-toy"), gn.make_problem("gaussian-quadratic")
    names = ["reinforce-loo", "reparam", "reinforce"]
    cells = study_base.grid([toy, quad], names, lambda e: [1, 4] if e.name == "reinforce-loo" else [3], 50)
    assert [(p.name, e.name, n, r, g) for p, e, n, r, g in cells] == [
        ("bernoulli-toy", "reinforce-loo", 4, 50, {}),       # N=1 is below its min_budget
        ("bernoulli-toy", "reinforce", 3, 50, {}),           # reparam: bernoulli-toy has no rsample
        ("gaussian-quadratic", "reinforce-loo", 4, 50, {}),
        ("gaussian-quadratic", "reparam", 3, 50, {}), ("gaussian-quadratic", "reinforce", 3, 50, {})]
    sweep = gn.engine.cells([toy, quad], names, [4], on_invalid="skip")
    assert [(p, e.name, n) for p, e, n, *_ in study_base.grid([toy, quad], names, [4], 50)] == \
        [(p, e.name, n) for p, e, n in sweep]
    with pytest.raises(ValueError, match="budget"):
        study_base.grid([toy], ["reinforce"], [2.5], 50)


def test_a_studys_grid_refuses_an_invalid_problem_up_front():
    """A problem that cannot give finite numbers is an error before any cell, not a skipped cell."""
    from torch.distributions import Normal

    broken = gn.ModelProblem(lambda p: Normal(p["loc"], 1.0), lambda z, p: -z**2, {"loc": float("nan")},
                             name="broken")
    with pytest.raises(ValueError, match="parameter 'loc' is not finite"):
        study_base.grid([broken], ["reinforce"], [2], 50)


def test_ratio_interval_covers_at_the_nominal_level():
    """Two independent normal samples; the delta-method ratio interval from the engine's variance
    intervals (bootstrap-t, for scalars) should cover the true variance ratio about 95% of the
    time (600 trials: the bootstrap is 15 ms an interval at R = 400)."""
    rng = np.random.default_rng(0)
    trials, r, true_ratio = 600, 400, 4.0
    hits = 0
    for _ in range(trials):
        a = rng.normal(0, 2.0, r)
        b = rng.normal(0, 1.0, r)
        va = gn.statistics.variance_interval(a)
        vb = gn.statistics.variance_interval(b)
        _, low, high = study_base.ratio_interval(*va, *vb)
        hits += low <= true_ratio <= high
    coverage = hits / trials
    se = np.sqrt(0.95 * 0.05 / trials)
    assert abs(coverage - 0.95) < 4 * se + 0.01, coverage


def test_noise_corrected_signal_is_unbiased_below_the_noise_floor():
    """||E g|| = 0.02 with R = 100 replicates in 50 dims (floor 1/sqrt(R) = 0.1): the plain squared
    norm is inflated by tr(Var)/R = 0.5, the corrected one is not."""
    import torch

    rng = np.random.default_rng(1)
    mu = np.zeros(50)
    mu[0] = 0.02 * np.sqrt(50)            # ||mu||^2 = 0.02, tr Var = 50: SNR = 0.02
    corrected, plain = [], []
    for _ in range(400):
        g = torch.as_tensor(rng.normal(mu, 1.0, size=(100, 50)))
        m = Moments.of({"g": g}, ["g"])
        corrected.append(m.signal2())
        plain.append(float(m.mean @ m.mean))
    corrected, plain = np.array(corrected), np.array(plain)
    assert abs(corrected.mean() - 0.02) < 4 * corrected.std(ddof=1) / np.sqrt(len(corrected))
    assert plain.mean() > 0.02 + 0.4


def test_bootstrap_moments_with_unit_weights_reproduce_the_estimates():
    import torch

    g = torch.as_tensor(np.random.default_rng(2).normal(1.0, 2.0, size=(30, 7)))
    m = Moments.of({"g": g}, ["g"])
    signal2, trace = m.boot(np.full((1, 30), 1 / 30))
    assert trace[0] == pytest.approx(m.trace(), rel=1e-5)
    assert signal2[0] == pytest.approx(m.signal2(), rel=1e-5)
    assert m.trace() == pytest.approx(float(g.var(0).sum()), rel=1e-12)


def test_problems_declare_their_parameter_groups():
    assert gn.make_problem("linear-gaussian-vae:d=2").groups == {"encoder": ["A", "b"], "decoder": ["mu"]}
    digits = gn.make_problem("digits-vae:latent=2,hidden=8,steps=40").groups
    assert set(digits) == {"encoder", "decoder"} and all(n.startswith("encoder.") for n in digits["encoder"])
    assert gn.make_problem("gaussian-cos").groups == {}


def test_oracle_samples_is_an_option_listed_only_when_set():
    assert "oracle_samples" not in gn.make_problem("linear-gaussian-vae").spec
    problem = gn.make_problem(study_base.with_options("linear-gaussian-vae", oracle_samples=4096))
    assert problem.oracle_samples == 4096 and "oracle_samples=4096" in problem.spec


def _outcome(name, held):
    return studies.Outcome(name, f"Title {name}", f"Claim of {name}.", held, [f"{name}: d = 0.5 [0.4, 0.6]"],
                           ["fig.png"], wall_seconds=1.0)


def test_update_readme_replaces_only_the_block_and_copies_figures(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nbefore\n\n<!-- results:start -->\nold text\n<!-- results:end -->\n\nafter\n")
    out = tmp_path / "out"
    for name in ("one", "two"):
        (out / name).mkdir(parents=True)
        (out / name / "fig.png").write_bytes(PNG_MAGIC + b"x")
    study_cli.update_readme(readme, [_outcome("one", True), _outcome("two", False)], out)
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n\n<!-- results:start -->\n") and text.endswith("<!-- results:end -->\n\nafter\n")
    assert "old text" not in text
    assert "one: d = 0.5 [0.4, 0.6]" in text and "Verdict: held" in text and "Verdict: did not hold" in text
    assert "![one: fig.png](docs/results/one-fig.png)" in text
    assert (tmp_path / "docs" / "results" / "two-fig.png").read_bytes() == PNG_MAGIC + b"x"
    study_cli.update_readme(readme, [_outcome("one", True)], out)   # idempotent block replacement
    assert readme.read_text().count("<!-- results:start -->") == 1

    bare = tmp_path / "BARE.md"
    bare.write_text("no markers\n")
    with pytest.raises(ValueError, match="results:start"):
        study_cli.update_readme(bare, [], out)


def test_command_line(capsys):
    assert cli.main(["study", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in studies.study_names() + ["all"])
    assert cli.main(["study", "no-such-study", "--out-dir", "x"]) == 2
    assert "unknown study 'no-such-study'" in capsys.readouterr().err
    assert cli.main(["study", "iwae-snr"]) == 2
    assert "--out-dir is required" in capsys.readouterr().err
    assert cli.main(["study", "iwae-snr", "--out-dir", "x", "--update-readme", "README.md"]) == 2
    assert "--update-readme needs" in capsys.readouterr().err
