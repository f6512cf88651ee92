"""Slurm's compact notations, parsed by pure functions, plus two small look-ups that ask Slurm itself.

Slurm hands every task its layout in compressed strings; this module turns them into plain values.
It never reads the environment (``launcher/topology.py`` does that and passes the strings in):

- ``parse_node_list("gpu-a[01-03,07],gpu-b2")`` -> ``["gpu-a01", "gpu-a02", "gpu-a03", "gpu-a07", "gpu-b2"]``
  (``SLURM_JOB_NODELIST``; zero padding kept, several bracket groups, text after a bracket).
- ``parse_tasks_per_node("2(x3),1")`` -> ``[2, 2, 2, 1]`` (``SLURM_TASKS_PER_NODE``,
  ``SLURM_STEP_TASKS_PER_NODE``); ``expand_tasks_per_node`` also checks the count against the nodes.
- ``master_port_for_job(job_id)``: a port every rank computes alone from ``SLURM_JOB_ID``, so all ranks
  agree without talking, and two jobs sharing a node get different ports; ``master_port_for_step`` also
  separates the job steps of one job (``SLURM_STEP_ID``), which may run side by side on one node.

Two functions may run ``scontrol`` (kept separate and small): ``hostnames`` prefers
``scontrol show hostnames`` (Slurm's own parser) and falls back to ``parse_node_list``; ``node_address``
returns a name or address a peer can connect to (simulated nodes such as ``n1`` do not resolve;
``scontrol show node`` knows their ``NodeAddr``).

Every function raises ``ValueError`` with the offending text on bad input; the caller adds the name
of the variable it came from.

Command line, for job scripts (one implementation of the derivation, shell and Python agree)::

    read MASTER_ADDR MASTER_PORT < <(python -m launcher.slurm rendezvous \\
        --nodelist "$SLURM_JOB_NODELIST" --job-id "$SLURM_JOB_ID")
"""
from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence

# Characters Slurm accepts in a node name outside brackets (hostname characters; '.' for FQDNs).
_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]*")
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
_TASKS_ITEM = re.compile(r"(\d+)(?:\(x(\d+)\))?")

# A node list that expands past this is a typo (``n[1-1000000]``), not a cluster.
MAX_NODES = 100_000

# Linux hands out ephemeral (outgoing) ports from 32768 upwards by default
# (/proc/sys/net/ipv4/ip_local_port_range = "32768 60999"). A listening port inside that range can be
# taken by any outgoing connection on the node (NCCL, gloo, pip, ...) just before we bind it; the
# default window [20000, 32000) stays below it.
DEFAULT_PORT_BASE = 20000
DEFAULT_PORT_SPAN = 12000


def parse_node_list(text: str) -> list[str]:
    """Expand a Slurm host list into node names, in the order Slurm lists them.

    ``gpu-a[01-03,07],gpu-b2`` -> gpu-a01, gpu-a02, gpu-a03, gpu-a07, gpu-b2. A range keeps the width
    of its first bound (``[08-10]`` -> 08, 09, 10; ``[8-10]`` -> 8, 9, 10). Text may follow a bracket
    (``n[1-2]-ib`` -> n1-ib, n2-ib) and one name may hold several bracket groups
    (``r[1-2]n[1-2]`` -> r1n1, r1n2, r2n1, r2n2: the last group varies fastest, as in scontrol; with
    three or more groups scontrol 22.05 uses another order, which no scheduler emits in practice).
    Slurm 22.05's scontrol rejects text after a bracket; this parser accepts it.
    Raises ``ValueError`` naming the offending text: empty lists or items, unbalanced or nested
    brackets, empty brackets, non-numeric or descending ranges, characters that cannot be in a name.
    """
    if not isinstance(text, str):
        raise ValueError(f"node list must be a string, got {type(text).__name__}: {text!r}")
    if not text.strip():
        raise ValueError(f"empty node list: {text!r}")
    names: list[str] = []
    for item in _split_top_level(text):
        names.extend(_expand_item(item, text))
        if len(names) > MAX_NODES:
            raise ValueError(f"node list {text!r} expands to more than {MAX_NODES} nodes")
    return names


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets; bracket balance is checked here."""
    items: list[str] = []
    depth = 0
    start = 0
    for position, char in enumerate(text):
        if char == "[":
            if depth:
                raise ValueError(f"nested '[' at position {position} in node list {text!r}")
            depth = 1
        elif char == "]":
            if not depth:
                raise ValueError(f"']' without '[' at position {position} in node list {text!r}")
            depth = 0
        elif char == "," and not depth:
            items.append(text[start:position])
            start = position + 1
    if depth:
        raise ValueError(f"unclosed '[' in node list {text!r}")
    items.append(text[start:])
    for item in items:
        if not item:
            raise ValueError(f"empty node name in node list {text!r} (stray comma?)")
    return items


def _expand_item(item: str, whole: str) -> list[str]:
    """Expand one name with zero or more bracket groups, e.g. ``r[1-2]n[01,03]-ib``."""
    # Alternating literal text and bracket bodies: re.split keeps the captured bodies at odd indices.
    parts = re.split(r"\[([^\]]*)\]", item)
    expansions = [""]
    for index, part in enumerate(parts):
        if index % 2 == 0:
            if _NAME_CHARS.fullmatch(part) is None:
                raise ValueError(
                    f"invalid character in {_where(item, whole)}: "
                    "node names hold letters, digits, '-', '_' and '.'"
                )
            expansions = [prefix + part for prefix in expansions]
        else:
            values = _expand_bracket(part, item, whole)
            if len(expansions) * len(values) > MAX_NODES:
                raise ValueError(f"node list {whole!r} expands to more than {MAX_NODES} nodes")
            expansions = [prefix + value for prefix in expansions for value in values]
    if not expansions[0]:
        raise ValueError(f"empty node name in node list {whole!r}")
    return expansions


def _expand_bracket(body: str, item: str, whole: str) -> list[str]:
    """``01-03,07`` -> 01, 02, 03, 07 (the width of each range's first bound is kept)."""
    if not body:
        raise ValueError(f"empty brackets in {_where(item, whole)}")
    values: list[str] = []
    for piece in body.split(","):
        match = _RANGE.fullmatch(piece)
        if match is None:
            raise ValueError(
                f"bad range {piece!r} in {_where(item, whole)}: expected N or N-M with digits"
            )
        first, last = match.group(1), match.group(2)
        if last is None:
            values.append(first)
            continue
        low, high = int(first), int(last)
        if high < low:
            raise ValueError(f"descending range {piece!r} in {_where(item, whole)}")
        if high - low + 1 > MAX_NODES:
            raise ValueError(f"range {piece!r} in node list {whole!r} spans more than {MAX_NODES} nodes")
        width = len(first)
        values.extend(str(number).zfill(width) for number in range(low, high + 1))
    return values


def _where(item: str, whole: str) -> str:
    return f"node list {whole!r}" if item == whole else f"{item!r} of node list {whole!r}"


def parse_tasks_per_node(text: str) -> list[int]:
    """Expand Slurm's tasks-per-node notation: ``2(x3),1`` -> [2, 2, 2, 1]; ``4`` -> [4].

    This is the form of ``SLURM_TASKS_PER_NODE``, ``SLURM_STEP_TASKS_PER_NODE`` and
    ``SLURM_JOB_CPUS_PER_NODE``. Counts must be positive integers; raises ``ValueError`` naming the text.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty tasks-per-node value: {text!r}")
    counts: list[int] = []
    for item in text.split(","):
        match = _TASKS_ITEM.fullmatch(item.strip())
        if match is None:
            raise ValueError(f"bad tasks-per-node item {item!r} in {text!r}: expected N or N(xM)")
        count = int(match.group(1))
        repeat = int(match.group(2)) if match.group(2) is not None else 1
        if count < 1 or repeat < 1:
            raise ValueError(f"tasks-per-node item {item!r} in {text!r} must be positive")
        if len(counts) + repeat > MAX_NODES:
            raise ValueError(f"tasks-per-node value {text!r} covers more than {MAX_NODES} nodes")
        counts.extend([count] * repeat)
    return counts


def expand_tasks_per_node(text: str, num_nodes: int) -> list[int]:
    """Tasks on each of ``num_nodes`` nodes, checked against the node count.

    A single count with no repeat (``4``, the form of ``SLURM_NTASKS_PER_NODE``) applies to every node;
    otherwise the notation must cover exactly ``num_nodes`` nodes (``2(x3),1`` needs 4), else
    ``ValueError`` naming both.
    """
    if num_nodes < 1:
        raise ValueError(f"number of nodes must be at least 1, got {num_nodes}")
    counts = parse_tasks_per_node(text)
    if len(counts) == num_nodes:
        return counts
    if len(counts) == 1 and "(" not in text:
        return counts * num_nodes
    raise ValueError(
        f"tasks-per-node value {text!r} describes {len(counts)} node(s) but the node list has {num_nodes}"
    )


def master_port_for_job(
    job_id: str | int, base: int = DEFAULT_PORT_BASE, span: int = DEFAULT_PORT_SPAN
) -> int:
    """The rendezvous port of a job: ``base + job_id % span``; every rank derives it alone.

    Deterministic (same job id, same port on every node and after a requeue, which keeps the job id),
    and consecutive jobs get consecutive ports, so jobs sharing a node collide only when their ids
    differ by a multiple of ``span`` (12000 by default: a collision needs 12000 jobs submitted between
    two jobs that are still running side by side on one node). The default window [20000, 32000) lies
    below Linux's ephemeral range (32768-60999), where outgoing connections could take the port first.
    Array tasks have their own ``SLURM_JOB_ID`` and so their own port.
    """
    text = str(job_id).strip()
    if not text.isdigit():
        raise ValueError(f"job id must be a non-negative integer, got {job_id!r}")
    if span < 1 or base < 1024 or base + span > 65536:
        raise ValueError(
            f"port window [{base}, {base + span}) must lie within [1024, 65536) and not be empty"
        )
    return base + int(text) % span


# Step s of job j uses job (j + STEP_PORT_STRIDE * s)'s port: steps of one job differ, and a step collides
# with another job's step 0 only when their ids differ by a multiple of the stride (mod the span).
STEP_PORT_STRIDE = 1009


def master_port_for_step(
    job_id: str | int, step_id: str | int = 0, base: int = DEFAULT_PORT_BASE, span: int = DEFAULT_PORT_SPAN
) -> int:
    """The rendezvous port of one job step: ``base + (job_id + 1009 * step_id) % span``.

    Step 0 gets ``master_port_for_job(job_id)``, the port the job scripts derive; each later step of the
    job (``srun`` run twice, side by side, in one allocation) gets another port in the same window.
    A step id that is not a number (``batch``, ``extern``, ``interactive``) counts as 0.
    """
    step_text = str(step_id).strip()
    step = int(step_text) if step_text.isdigit() else 0
    text = str(job_id).strip()
    if not text.isdigit():
        raise ValueError(f"job id must be a non-negative integer, got {job_id!r}")
    return master_port_for_job(int(text) + STEP_PORT_STRIDE * step, base, span)


def hostnames(nodelist: str, scontrol: str | None = "scontrol") -> list[str]:
    """Node names of ``nodelist``: ``scontrol show hostnames`` when that command exists, else the parser.

    ``scontrol`` is a command name or path (looked up on PATH at call time); ``None`` uses only
    ``parse_node_list``. When scontrol prints nothing (it exits 0 even for "Invalid hostlist", and
    fails without a slurm.conf) the parser decides; raises ``ValueError`` when neither accepts the list.
    Slurm 22.05's scontrol rejects text after a bracket (``n[1-2]-ib``), which the parser accepts.
    """
    command = shutil.which(scontrol) if scontrol else None
    if command is None:
        return parse_node_list(nodelist)
    try:
        result = subprocess.run(
            [command, "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        scontrol_said = str(error)
    else:
        names = result.stdout.split()
        if result.returncode == 0 and names:
            return names
        scontrol_said = result.stderr.strip() or f"exit code {result.returncode}"
    try:
        return parse_node_list(nodelist)
    except ValueError as error:
        raise ValueError(f"{error}; 'scontrol show hostnames' said: {scontrol_said}") from None


def node_address(node: str, scontrol: str | None = "scontrol") -> str:
    """A name or address other nodes can connect to for ``node``.

    The node name itself when it resolves (real clusters); otherwise the ``NodeAddr`` that
    ``scontrol show node <node>`` reports (simulated nodes, several slurmd on one host). Raises
    ``ValueError`` naming the node when neither works (set MASTER_ADDR to override).
    """
    try:
        socket.getaddrinfo(node, None)
        return node
    except (socket.gaierror, UnicodeError):
        pass
    command = shutil.which(scontrol) if scontrol else None
    if command is None:
        raise ValueError(
            f"node {node!r} does not resolve and scontrol is not on PATH to look up its NodeAddr; "
            "set MASTER_ADDR to an address of that node"
        )
    result = subprocess.run(
        [command, "show", "node", node], capture_output=True, text=True, timeout=30
    )
    address = parse_node_addr(result.stdout) if result.returncode == 0 else None
    if address is None:
        detail = (result.stderr.strip().splitlines() or ["no NodeAddr in its output"])[-1]
        raise ValueError(
            f"node {node!r} does not resolve and 'scontrol show node {node}' gave no address "
            f"({detail}); set MASTER_ADDR to an address of that node"
        )
    return address


def parse_node_addr(scontrol_output: str) -> str | None:
    """The ``NodeAddr=`` value of ``scontrol show node`` output, or None when absent."""
    match = re.search(r"\bNodeAddr=(\S+)", scontrol_output)
    return match.group(1) if match else None


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launcher.slurm",
        description="Slurm helpers for job scripts.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    rendezvous = commands.add_parser(
        "rendezvous", help="print 'MASTER_ADDR MASTER_PORT' for a job: its first node and a port from its id"
    )
    rendezvous.add_argument("--nodelist", required=True, help="SLURM_JOB_NODELIST")
    rendezvous.add_argument("--job-id", required=True, help="SLURM_JOB_ID")
    expand = commands.add_parser("hostnames", help="print one node name a line")
    expand.add_argument("nodelist")
    args = parser.parse_args(argv)
    try:
        if args.command == "hostnames":
            print("\n".join(hostnames(args.nodelist)))
            return 0
        try:
            address = node_address(hostnames(args.nodelist)[0])
        except ValueError as error:
            raise ValueError(f"SLURM_JOB_NODELIST={args.nodelist!r}: {error}") from None
        try:
            port = master_port_for_job(args.job_id)
        except ValueError as error:
            raise ValueError(f"SLURM_JOB_ID={args.job_id!r}: {error}") from None
    except ValueError as error:
        print(f"launcher.slurm: {error}", file=sys.stderr)
        return 2
    print(address, port)
    return 0

if __name__ == "__main__":
    sys.exit(_main())
