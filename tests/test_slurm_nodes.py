"""Slurm's compact notations (node lists, tasks per node) and the job's rendezvous port: tables of cases.

The pure functions take strings and return plain values; where scontrol is installed, the parser is
also checked against Slurm's own expansion of the same lists.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from launcher import slurm
from launcher.slurm import (
    expand_tasks_per_node,
    hostnames,
    master_port_for_job,
    master_port_for_step,
    node_address,
    parse_node_addr,
    parse_node_list,
    parse_tasks_per_node,
)

NODE_LISTS = [
    # (SLURM_JOB_NODELIST, expanded names)
    ("n1", ["n1"]),
    ("localhost", ["localhost"]),
    ("n1,n2", ["n1", "n2"]),
    ("gpu-a[01-03,07],gpu-b2", ["gpu-a01", "gpu-a02", "gpu-a03", "gpu-a07", "gpu-b2"]),
    ("compute-b2[1-3,5-6,8],compute-a1",
     ["compute-b21", "compute-b22", "compute-b23", "compute-b25", "compute-b26", "compute-b28",
      "compute-a1"]),
    ("n[1-3]", ["n1", "n2", "n3"]),
    ("n[8-10]", ["n8", "n9", "n10"]),
    ("n[08-10]", ["n08", "n09", "n10"]),
    ("n[001-003]", ["n001", "n002", "n003"]),
    ("n[01-3]", ["n01", "n02", "n03"]),  # the first bound's width wins, as in Slurm
    ("n[1-03]", ["n1", "n2", "n3"]),
    ("n[0-1]", ["n0", "n1"]),
    ("n[5]", ["n5"]),
    ("n[1,1]", ["n1", "n1"]),  # kept as written, like scontrol
    ("n[3,1,2]", ["n3", "n1", "n2"]),  # order as written
    ("[1-3]", ["1", "2", "3"]),
    ("n[1-2]-ib", ["n1-ib", "n2-ib"]),  # text after the bracket
    ("n[1-2]-ib,m1", ["n1-ib", "n2-ib", "m1"]),
    ("a.b[1-2].c", ["a.b1.c", "a.b2.c"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),  # several groups: the last varies fastest
    ("n[9-11]x[1,2]", ["n9x1", "n9x2", "n10x1", "n10x2", "n11x1", "n11x2"]),
    ("rack1-gpu[1-2],rack2-gpu[01-02]", ["rack1-gpu1", "rack1-gpu2", "rack2-gpu01", "rack2-gpu02"]),
    ("node_a[1-2]", ["node_a1", "node_a2"]),
    ("n[1-2],n[1-2]", ["n1", "n2", "n1", "n2"]),
    ("n[98-101]", ["n98", "n99", "n100", "n101"]),
]

INVALID_NODE_LISTS = [
    # (text, a fragment the message must contain)
    ("", "empty node list"),
    ("   ", "empty node list"),
    ("n[3-1]", "descending range '3-1'"),
    ("n[]", "empty brackets"),
    ("a,,b", "empty node name"),
    (",a", "empty node name"),
    ("a,", "empty node name"),
    ("n[1-2", "unclosed '['"),
    ("n1]", "']' without '['"),
    ("n[1]]", "']' without '['"),
    ("n[[1]]", "nested '['"),
    ("n[a-b]", "bad range 'a-b'"),
    ("n[1-2,]", "bad range ''"),
    ("n[-2]", "bad range '-2'"),
    ("n[1-]", "bad range '1-'"),
    ("n[1-3:2]", "bad range '1-3:2'"),
    ("n[ 1-2]", "bad range ' 1-2'"),
    ("n1 n2", "invalid character"),
    ("n1;n2", "invalid character"),
    ("n[1-1000000]", "more than"),
    ("a[1-1000]b[1-1000]", "more than"),
]


@pytest.mark.parametrize("text, expected", NODE_LISTS, ids=[case[0] for case in NODE_LISTS])
def test_node_list_expands_to_names_in_slurm_order(text, expected):
    assert parse_node_list(text) == expected


@pytest.mark.parametrize("text, fragment", INVALID_NODE_LISTS, ids=[repr(case[0]) for case in INVALID_NODE_LISTS])
def test_invalid_node_list_raises_value_error_naming_the_text(text, fragment):
    with pytest.raises(ValueError) as raised:
        parse_node_list(text)
    message = str(raised.value)
    assert fragment in message
    assert repr(text) in message or repr(text.strip()) in message or "more than" in message


def test_node_list_must_be_a_string():
    with pytest.raises(ValueError, match="must be a string"):
        parse_node_list(None)  # type: ignore[arg-type]


TASKS_PER_NODE = [
    # (SLURM_TASKS_PER_NODE, counts)
    ("1", [1]),
    ("4", [4]),
    ("2(x3)", [2, 2, 2]),
    ("2(x3),1", [2, 2, 2, 1]),
    ("1,2(x2),3", [1, 2, 2, 3]),
    ("8(x1)", [8]),
    ("16(x2),8(x2)", [16, 16, 8, 8]),
]

INVALID_TASKS_PER_NODE = ["", " ", "x", "2(x)", "2(3)", "2(x3", "(x3)", "2,,1", "0", "2(x0)", "-1", "2.5",
                          "2(x100001)"]


@pytest.mark.parametrize("text, expected", TASKS_PER_NODE, ids=[case[0] for case in TASKS_PER_NODE])
def test_tasks_per_node_expands_repeats(text, expected):
    assert parse_tasks_per_node(text) == expected


@pytest.mark.parametrize("text", INVALID_TASKS_PER_NODE, ids=[repr(text) for text in INVALID_TASKS_PER_NODE])
def test_invalid_tasks_per_node_raises_value_error_naming_the_text(text):
    with pytest.raises(ValueError) as raised:
        parse_tasks_per_node(text)
    assert repr(text) in str(raised.value) or "more than" in str(raised.value)


EXPANDED_TASKS = [
    # (text, nodes, counts)
    ("2(x3),1", 4, [2, 2, 2, 1]),
    ("4", 3, [4, 4, 4]),  # SLURM_NTASKS_PER_NODE: one count for every node
    ("4", 1, [4]),
    ("2(x2)", 2, [2, 2]),
    ("1,3", 2, [1, 3]),
]


@pytest.mark.parametrize("text, nodes, expected", EXPANDED_TASKS)
def test_tasks_per_node_expanded_to_the_node_count(text, nodes, expected):
    assert expand_tasks_per_node(text, nodes) == expected


@pytest.mark.parametrize("text, nodes", [("2(x3),1", 3), ("2(x3),1", 5), ("2(x1)", 2), ("1,3", 3), ("2", 0)])
def test_tasks_per_node_that_does_not_match_the_node_count_raises(text, nodes):
    with pytest.raises(ValueError) as raised:
        expand_tasks_per_node(text, nodes)
    assert str(nodes) in str(raised.value)


def test_master_port_is_deterministic_for_a_job():
    assert master_port_for_job("123456") == master_port_for_job(123456) == master_port_for_job(" 123456 ")


@pytest.mark.parametrize("job_id, port", [(0, 20000), (1, 20001), (11999, 31999), (12000, 20000),
                                          (123456, 20000 + 123456 % 12000)])
def test_master_port_table(job_id, port):
    assert master_port_for_job(job_id) == port


def test_consecutive_jobs_sharing_a_node_get_different_ports():
    ports = {master_port_for_job(job_id) for job_id in range(500_000, 500_000 + 11_999)}
    assert len(ports) == 11_999


def test_default_port_window_stays_below_the_linux_ephemeral_range():
    ports = [master_port_for_job(job_id) for job_id in range(0, 30_000, 7)]
    assert min(ports) >= 20000 and max(ports) < 32768


def test_master_port_honours_base_and_span():
    assert master_port_for_job(1005, base=40000, span=1000) == 40005


@pytest.mark.parametrize("job_id, step_id, port", [(123456, 0, 20000 + 123456 % 12000), (123456, "0", 20000 + 123456 % 12000),
                                                   (5, 1, 20000 + 1014), (5, 2, 20000 + 2023), (11999, 1, 20000 + 1008),
                                                   (7, "batch", 20007), (7, "extern", 20007)])
def test_step_port_table(job_id, step_id, port):
    assert master_port_for_step(job_id, step_id) == port


def test_step_zero_gets_the_port_the_job_scripts_derive():
    assert all(master_port_for_step(job_id, 0) == master_port_for_job(job_id) for job_id in range(0, 40_000, 13))


def test_the_steps_of_one_job_get_different_ports():
    for job_id in (0, 777, 123_456, 11_999):
        assert len({master_port_for_step(job_id, step) for step in range(11)}) == 11


def test_a_step_collides_with_another_jobs_first_step_only_a_stride_apart():
    # Jobs submitted close together share nodes: job j's step s must not meet job j + k's step 0 for small k.
    for job_id in range(1000, 1100):
        steps = {master_port_for_step(job_id, step) for step in range(1, 6)}
        neighbours = {master_port_for_step(other, 0) for other in range(job_id - 1000, job_id + 1000)}
        assert not steps & neighbours


@pytest.mark.parametrize("job_id", ["", "abc", "12_3", "-5", "1.5", None])
def test_master_port_rejects_a_job_id_that_is_not_a_number(job_id):
    with pytest.raises(ValueError, match="job id"):
        master_port_for_job(job_id)


@pytest.mark.parametrize("base, span", [(100, 10), (60000, 10000), (20000, 0)])
def test_master_port_rejects_a_window_outside_the_port_range(base, span):
    with pytest.raises(ValueError, match="port window"):
        master_port_for_job(1, base=base, span=span)


def test_hostnames_without_scontrol_uses_the_parser():
    assert hostnames("gpu-a[01-02],gpu-b2", scontrol=None) == ["gpu-a01", "gpu-a02", "gpu-b2"]
    assert hostnames("n[1-2]", scontrol="no-such-scontrol-command") == ["n1", "n2"]


def test_hostnames_without_scontrol_raises_on_invalid_lists():
    with pytest.raises(ValueError, match="descending"):
        hostnames("n[3-1]", scontrol=None)


def test_node_address_of_a_resolvable_name_is_the_name():
    assert node_address("localhost", scontrol=None) == "localhost"


def test_node_address_of_an_unresolvable_name_without_scontrol_names_the_node():
    with pytest.raises(ValueError) as raised:
        node_address("no-such-node-x9.invalid", scontrol=None)
    message = str(raised.value)
    assert "'no-such-node-x9.invalid'" in message and "scontrol" in message and "MASTER_ADDR" in message


SCONTROL_SHOW_NODE = """NodeName=n1 Arch=x86_64 CoresPerSocket=1
   CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=0.31
   NodeAddr=127.0.0.1 NodeHostName=n1 Version=22.05.8
   State=IDLE ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A
"""


def test_node_addr_is_read_from_scontrol_show_node():
    assert parse_node_addr(SCONTROL_SHOW_NODE) == "127.0.0.1"
    assert parse_node_addr("Node n9 not found") is None


def test_rendezvous_command_prints_address_and_port(capsys):
    assert slurm._main(["rendezvous", "--nodelist", "localhost,n2", "--job-id", "42"]) == 0
    assert capsys.readouterr().out.split() == ["localhost", "20042"]


def test_rendezvous_command_names_the_variable_on_bad_input(capsys):
    assert slurm._main(["rendezvous", "--nodelist", "n[3-1]", "--job-id", "42"]) == 2
    assert "SLURM_JOB_NODELIST" in capsys.readouterr().err


# Slurm's own expansion of every valid list it accepts (22.05 rejects text after a bracket).
SLURM_ACCEPTS = [text for text, _ in NODE_LISTS if "]-" not in text and "]." not in text]


@pytest.fixture(scope="module")
def scontrol_with_config(tmp_path_factory):
    """scontrol plus a minimal slurm.conf: `show hostnames` needs a config but no running controller."""
    command = shutil.which("scontrol")
    if command is None:
        pytest.skip("scontrol not installed (apt-get install slurm-client): cannot compare with Slurm's parser")
    config = tmp_path_factory.mktemp("slurmconf") / "slurm.conf"
    config.write_text("ClusterName=t\nSlurmctldHost=localhost\nNodeName=n1 CPUs=1\nPartitionName=p Nodes=ALL\n")
    return command, str(config)


@pytest.mark.parametrize("text", SLURM_ACCEPTS)
def test_parser_agrees_with_scontrol_show_hostnames(text, scontrol_with_config, monkeypatch):
    command, config = scontrol_with_config
    monkeypatch.setenv("SLURM_CONF", config)
    result = subprocess.run([command, "show", "hostnames", text], capture_output=True, text=True, check=True)
    assert result.stdout.split() == parse_node_list(text)
    assert hostnames(text, scontrol=command) == parse_node_list(text)


def test_hostnames_falls_back_to_the_parser_where_scontrol_rejects_a_suffix(scontrol_with_config, monkeypatch):
    command, config = scontrol_with_config
    monkeypatch.setenv("SLURM_CONF", config)
    assert hostnames("n[1-2]-ib", scontrol=command) == ["n1-ib", "n2-ib"]


def test_hostnames_reports_both_parsers_on_an_invalid_list(scontrol_with_config, monkeypatch):
    command, config = scontrol_with_config
    monkeypatch.setenv("SLURM_CONF", config)
    with pytest.raises(ValueError) as raised:
        hostnames("n[3-1]", scontrol=command)
    assert "descending range" in str(raised.value) and "Invalid hostlist" in str(raised.value)
