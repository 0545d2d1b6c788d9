"""The README's worked examples, run from the README itself: a criterion and an allocation (one Python file and
one YAML each), a model and a calibration text (one YAML each) reach validation, a Hydra sweep and a rendered
table without any other file being touched."""
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_overrides
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from tiny import tiny_ids, tiny_model

from dlp.errors import UserError
from dlp.registry import ALLOCATIONS, CRITERIA, make_allocator, make_criterion, parameters
from dlp.walk.prune import prune_model
from experiments import methods, run, tables
from experiments.config import compose_config
from experiments.validation import check_choices, validate

README = Path(__file__).resolve().parent.parent / "README.md"
CRITERION, ALLOCATION = "baselines/criteria/wanda_power.py", "baselines/allocations/weight_norm.py"
MODEL, DATA = "conf/model/tinyllama-1.1b.yaml", "conf/data/my-notes.yaml"


def examples() -> dict[str, str]:
    """Fenced blocks of the README whose first line names the file they are: `# <path>`."""
    found = {}
    for body in re.findall(r"```(?:python|yaml)\n(.*?)```", README.read_text(), re.DOTALL):
        first, _, rest = body.partition("\n")
        if first.startswith("# ") and "/" in first:
            found[first[2:].strip()] = body
    return found


@pytest.fixture(scope="module")
def added():
    """The README's two methods defined as a user's files would define them (modules that register on import),
    then taken out of the registry again."""
    blocks = examples()
    for path in (CRITERION, ALLOCATION):
        module = types.ModuleType(f"readme_{Path(path).stem}")
        exec(compile(blocks[path], path, "exec"), module.__dict__)
        sys.modules[module.__name__] = module
    yield blocks
    CRITERIA.pop("wanda_power", None)
    ALLOCATIONS.pop("weight_norm", None)


def test_readme_shows_all_four_examples():
    assert {CRITERION, ALLOCATION, CRITERION.replace("baselines/criteria", "conf/criterion").replace(".py", ".yaml"),
            ALLOCATION.replace("baselines/allocations", "conf/allocation").replace(".py", ".yaml"),
            MODEL, DATA} <= set(examples())


def test_each_yaml_holds_its_constructor_parameters(added):
    """The YAML shown is what the method takes: its name and every constructor default."""
    for table, name, group in ((CRITERIA, "wanda_power", "criterion"), (ALLOCATIONS, "weight_norm", "allocation")):
        shown = yaml.safe_load(added[f"conf/{group}/{name}.yaml"])
        assert shown == {"name": name, **parameters(table[name])}
        assert compose_config([f"{group}={name}"])[group] == shown  # Hydra composes the registered defaults


def test_wanda_power_at_exponent_one_is_wanda(added):
    """The example criterion against an independent path: at a = 1 its pruned model equals Wanda's to the bit,
    at a = 0.5 it differs."""
    ids = tiny_ids(8)
    pruned = {}
    for name, params in (("wanda", {}), ("wanda_power", {"exponent": 1.0}), ("wanda_power", {"exponent": 0.5})):
        model = tiny_model("llama")
        prune_model(model, ids, make_criterion(name, **params), [0.5] * 3, batch_size=4, progress=False)
        pruned[(name, params.get("exponent"))] = model.state_dict()
    wanda, one, half = pruned[("wanda", None)], pruned[("wanda_power", 1.0)], pruned[("wanda_power", 0.5)]
    assert all(torch.equal(wanda[k], one[k]) for k in wanda)
    assert any(not torch.equal(wanda[k], half[k]) for k in wanda)


def test_weight_norm_centres_on_the_target(added):
    model = tiny_model("llama")
    allocation = make_allocator("weight_norm").allocate(model, None, 0.6, 1, progress=False)
    s, scores = allocation.sparsities, allocation.scores
    assert sum(s) / len(s) == pytest.approx(0.6, abs=1e-12)  # equal-sized blocks: the plain mean is the target
    assert s[scores.index(max(scores))] == min(s) and s[scores.index(min(scores))] == max(s)
    assert max(s) - min(s) == pytest.approx(2 * 0.08)  # min-max scaled to twice the spread


def test_validation_knows_them_and_refuses_a_wrong_parameter(added):
    check_choices(["criterion=wanda_power,wanda", "allocation=weight_norm"])
    with pytest.raises(UserError, match="unknown criterion 'wanda_pow'"):
        check_choices(["criterion=wanda_pow"])
    cfg = compose_config(["criterion=wanda_power", "allocation=weight_norm", "+criterion.power=2"])
    with pytest.raises(UserError, match="criterion wanda_power has no parameter power; it takes exponent"):
        validate(cfg)


def test_hydra_sweep_runs_them(added, workspace, tmp_path, monkeypatch):
    """`python -m experiments.run -m ...` in this process (Hydra's basic launcher runs the cells in turn)."""
    results = tmp_path / "runs"
    overrides = [o if not o.startswith("results_dir=") else f"results_dir={results}"
                 for o in tiny_overrides(workspace)]
    monkeypatch.setattr(sys, "argv", ["run", "-m", "criterion=wanda_power", "allocation=uniform,weight_norm",
                                      "sparsity=0.5", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides])
    try:
        run.cli()
    finally:
        GlobalHydra.instance().clear()
    records = {p.name.split("_s0.5")[0]: json.loads(p.read_text()) for p in results.glob("*.json")}
    assert set(records) == {"tiny_wanda_power_uniform", "tiny_wanda_power_weight_norm"}
    assert all(r["status"] == "ok" for r in records.values())
    assert records["tiny_wanda_power_weight_norm"]["allocation"]["name"] == "weight_norm"
    assert records["tiny_wanda_power_weight_norm"]["config"]["criterion"] == {"name": "wanda_power", "exponent": 0.5}


def test_rendered_table_has_their_rows(added, workspace, tmp_path):
    md, cells = tables.table1(["smollm2-135m"], "cpu", 0.5, tiny_overrides(workspace, "extending_runs"), tmp_path,
                              criteria=["wanda_power", "wanda"], allocations=["uniform", "weight_norm"])
    rows = [tuple(c.strip() for c in line.split("|")[1:3]) for line in md.splitlines() if line.startswith("| ")]
    assert rows[1:] == [("Dense", "-"), ("Wanda^a", "Uniform"), ("Wanda^a", "WeightNorm"), ("Wanda", "Uniform"),
                        ("Wanda", "WeightNorm")]
    assert all(r["status"] == "ok" for rs in cells.values() for r in rs)
    assert md.count("WeightNorm is lower than uniform") + md.count("WeightNorm is higher than uniform") == 2


def test_model_and_calibration_yaml_make_a_table_column(workspace, tmp_path):
    """The README's model and data YAMLs, stored as Hydra would read them from conf/ (their paths pointed at the
    tiny model and text: no hub here; float32 on the CPU)."""
    blocks = examples()
    model = {**yaml.safe_load(blocks[MODEL]), "path": str(workspace / "model"), "dtype": "float32"}
    data = {**yaml.safe_load(blocks[DATA]), "path": str(workspace / "docs.txt"), "nsamples": 4, "seqlen": 64}
    store = ConfigStore.instance()
    store.store(group="model", name="tinyllama-1.1b", node=model)
    store.store(group="data", name="my-notes", node=data)
    assert "tinyllama-1.1b" in methods.choices("model") and "my-notes" in methods.choices("data")
    extra = ["data=my-notes", "eval=file", f"eval.path={workspace / 'docs.txt'}", "eval.seqlen=64",
             "eval.max_windows=3", f"results_dir={tmp_path / 'runs'}", "progress=false", "wandb.mode=disabled"]
    md, cells = tables.table1(["tinyllama-1.1b"], "cpu", 0.5, extra, tmp_path, criteria=["wanda"],
                              allocations=["uniform"])
    assert md.splitlines()[2] == "| Method | Layerwise | tinyllama-1.1b |"
    ok = [r for rs in cells.values() for r in rs if r["status"] == "ok"]
    assert len(ok) == 2 and ok[1]["data"]["calibration"]["name"] == "file:docs.txt"
    assert ok[1]["config"]["model"]["name"] == "tinyllama-1.1b"


PLUGIN = '''"""Another package's criterion: each row's smallest |W| go, like magnitude, under another name."""
from dlp.methods.criterion import Criterion
from dlp.methods.masks import lowest_nm, lowest_per_row, zero_where
from dlp.registry import register_criterion


@register_criterion("plugin_magnitude", label="PluginMagnitude")
class PluginMagnitude(Criterion):
    def prune(self, weight, stats, sparsity, pattern):
        score = weight.abs()
        return zero_where(weight, lowest_nm(score, pattern) if pattern else lowest_per_row(score, sparsity))
'''


def fresh(code: str, env: dict | None = None, *args):
    import os
    import subprocess

    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args], cwd=README.parent,
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_a_fresh_process_finds_every_method_with_no_import_first():
    done = fresh("from dlp.registry import make_criterion, make_allocator\n"
                 "print(type(make_criterion('wanda')).__module__, type(make_allocator('owl')).__module__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["baselines.criteria.wanda", "baselines.allocations.owl"]


def test_a_method_in_another_installed_package_is_found_through_its_entry_point(workspace, tmp_path):
    """A package (its module and its dist-info, as pip installs it) declares its module under the group
    `dlp_bench.methods`; with it on sys.path, the registry lists its criterion beside the suite's, and the
    real command line prunes with it."""
    import os

    site = tmp_path / "site"
    (site / "extra_methods").mkdir(parents=True)
    (site / "extra_methods" / "__init__.py").write_text(PLUGIN)
    info = site / "extra_methods-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-methods\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dlp_bench.methods]\nextra = extra_methods\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    listed = fresh("from dlp.registry import CRITERIA\nprint(' '.join(sorted(CRITERIA)))", env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["magnitude", "plugin_magnitude", "ria", "sparsegpt", "wanda"]
    ran = fresh("", env, "-m", "experiments.run", *tiny_overrides(workspace, "plugin_runs"),
                "criterion=plugin_magnitude", "sparsity=0.5")
    assert ran.returncode == 0, ran.stderr
    (path,) = (workspace / "plugin_runs").glob("*.json")
    record = json.loads(path.read_text())
    assert record["config"]["criterion"]["name"] == "plugin_magnitude" and record["sparsity"]["actual"] == 0.5
    without = fresh("from dlp.registry import CRITERIA\nprint(' '.join(sorted(CRITERIA)))")
    assert "plugin_magnitude" not in without.stdout.split()  # the control: found through the entry point only
