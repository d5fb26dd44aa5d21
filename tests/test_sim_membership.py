"""The membership simulator (`zmqllm sim membership`) at small N: its invariants, its report, its command line."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from zmqllm.cli.main import main
from zmqllm.core.swim import UP
from zmqllm.sim.membership import Mesh, SimSettings, Watch, all_to_all, run_membership

QUICK = dict(node_days=0.001)
"""The shortest fault-free stretch (60 simulated seconds): the invariants, not the false-death rate."""


@pytest.fixture(scope="module")
def lossy_report() -> dict:
    return run_membership(SimSettings(nodes=16, loss=0.05, seed=4, **QUICK))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("nodes, loss", [(8, 0.0), (24, 0.02)])
def test_every_crash_is_seen_by_every_live_node_and_a_healed_partition_agrees(nodes: int, loss: float) -> None:
    report = run_membership(SimSettings(nodes=nodes, loss=loss, seed=2, **QUICK))
    figures = report["figures"]
    # all_at is set only once every node alive at the crash judged it: a figure, not None, for each crash
    assert figures["detect_all_max_s"] is not None
    assert 0 < figures["detect_median_s"] <= figures["detect_p99_s"] <= figures["detect_all_max_s"]
    assert figures["heal_converge_s"] is not None
    assert figures["join_agree_max_s"] is not None
    assert figures["false_deaths"] == 0


@pytest.mark.timeout(60)
def test_the_report_has_the_figures_scripts_read(lossy_report: dict) -> None:
    figures = lossy_report["figures"]
    for key in ("detect_median_s", "detect_p99_s", "detect_all_median_s", "false_deaths_per_node_day",
                "msgs_per_node_s", "bytes_per_node_s", "join_agree_median_s", "heal_converge_s"):
        assert isinstance(figures[key], (int, float)), key
    baseline = figures["all_to_all"]
    assert baseline["msgs_per_node_s"] == pytest.approx((16 - 1) / 0.5)
    assert figures["msgs_per_node_s"] < baseline["msgs_per_node_s"]
    assert lossy_report["settings"]["loss"] == 0.05 and isinstance(lossy_report["met"], bool)
    json.dumps(lossy_report)  # one JSON document


@pytest.mark.timeout(60)
def test_a_run_is_repeated_exactly_by_its_seed() -> None:
    first, second = (run_membership(SimSettings(nodes=6, loss=0.02, seed=11, crashes=1, **QUICK)) for _ in range(2))
    for report in (first, second):
        report["figures"].pop("wall_s")
    assert first == second


@pytest.mark.timeout(60)
def test_no_permanent_disagreement_after_a_partition_heals() -> None:
    mesh = Mesh(20, 0.02, seed=6)
    watch = mesh.watch = Watch(mesh)
    mesh.run_until(5.0)
    side = set(random.Random(1).sample(sorted(mesh.nodes), 7))
    mesh.partition(side)
    mesh.run_until(35.0)
    assert watch.total_wrong > 0  # each half holds the other dead
    mesh.heal()
    mesh.run_until(95.0)
    assert watch.total_wrong == 0
    assert all(mesh.nodes[a].state_of(b) in UP for a in mesh.nodes for b in mesh.nodes if a != b)


def test_the_all_to_all_model_loses_more_nodes_to_loss_as_loss_grows() -> None:
    deaths = [all_to_all(200, loss, 3600.0, random.Random(1))["false_deaths_expected"] for loss in (0.0, 0.02, 0.05)]
    assert deaths[0] == 0 < deaths[1] < deaths[2]


# -- the command line -------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_the_command_prints_one_json_document_with_the_detection_figures() -> None:
    result = CliRunner().invoke(main, ["sim", "membership", "--nodes", "6", "--loss", "0.02", "--seed", "3",
                                       "--node-days", "0.001", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["settings"]["nodes"] == 6 and report["settings"]["seed"] == 3
    assert report["figures"]["detect_median_s"] > 0 and report["figures"]["detect_p99_s"] > 0
    assert "membership N=6" in result.stderr  # progress on stderr


@pytest.mark.timeout(60)
def test_the_command_prints_a_summary_by_default() -> None:
    result = CliRunner().invoke(main, ["sim", "membership", "--nodes", "5", "--node-days", "0.001"])
    assert result.exit_code == 0, result.output
    assert "crash detected" in result.stdout and "all-to-all heartbeat" in result.stdout


@pytest.mark.parametrize("args, named", [(["--nodes", "1"], "--nodes"), (["--nodes", "ten"], "--nodes"),
                                         (["--loss", "0.9"], "--loss"), (["--loss", "nan"], "--loss"),
                                         (["--seed", "-1"], "--seed"), (["--node-days", "0"], "--node-days")])
def test_bad_values_are_one_line_naming_the_option_and_exit_2(args: list[str], named: str) -> None:
    result = CliRunner().invoke(main, ["sim", "membership", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr


def test_help_teaches_with_examples() -> None:
    result = CliRunner().invoke(main, ["sim", "membership", "--help"])
    assert result.exit_code == 0
    assert "zmqllm sim membership --nodes 1000 --loss 0.02" in result.stdout and "ZMQLLM_SIM_LOSS" in result.stdout
