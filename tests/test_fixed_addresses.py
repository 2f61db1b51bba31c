"""The seccomp profile of address-dependent nodes (builders/executors/fixed_addresses.py): Docker's rules
for a container without capabilities, plus personality(ADDR_NO_RANDOMIZE), and only for mlc-compile nodes.
The real container path is tests/test_mlc_build.py::test_a_library_compiled_again_is_bit_identical."""

import json

from builders.executors import fixed_addresses as fa


def _rules():
    return json.loads(fa.profile())


def test_only_mlc_compile_nodes_run_with_fixed_addresses():
    assert fa.wanted({"kind": "mlc-compile"})
    for kind in ("mlc-weights", "mlc-lib", "gguf-convert", "model", "reference", None):
        assert not fa.wanted({"kind": kind})
    assert fa.command(["python", "-m", "builders.node"]) == ["setarch", "-R", "python", "-m", "builders.node"]


def test_profile_refuses_by_default_and_allows_the_personality_setarch_sets():
    p = _rules()
    assert p["defaultAction"] == "SCMP_ACT_ERRNO"
    personality = sorted(r["args"][0]["value"] for r in p["syscalls"] if r["names"] == ["personality"])
    assert personality == sorted([0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF, 0x0040000])
    assert all(r["action"] == "SCMP_ACT_ALLOW" and r["args"][0]["op"] == "SCMP_CMP_EQ"
               for r in p["syscalls"] if r["names"] == ["personality"])


def test_profile_allows_ordinary_syscalls_and_none_of_the_refused_ones():
    p = _rules()
    unconditional = {n for r in p["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and "args" not in r for n in r["names"]}
    assert {"read", "write", "openat", "mmap", "execve", "futex", "wait4", "exit_group"} <= unconditional
    assert not unconditional & (fa.REFUSED | {"personality", "clone", "clone3"})
    assert {"ptrace", "mount", "unshare", "setns", "bpf", "kexec_load"} <= fa.REFUSED
    (clone,) = [r for r in p["syscalls"] if r["names"] == ["clone"]]
    assert clone["args"] == [{"index": 0, "value": fa.CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                              "op": "SCMP_CMP_MASKED_EQ"}]  # no new namespaces
    (clone3,) = [r for r in p["syscalls"] if r["names"] == ["clone3"]]
    assert clone3["action"] == "SCMP_ACT_ERRNO" and clone3["errnoRet"] == 38


def test_a_missing_syscall_table_is_a_one_line_error(tmp_path, monkeypatch):
    import platform

    import pytest

    from builders.errors import ToolchainError

    monkeypatch.setitem(fa.SYSCALL_TABLES, platform.machine(), ("SCMP_ARCH_X86_64", tmp_path / "unistd.h"))
    fa.profile.cache_clear()
    try:
        with pytest.raises(ToolchainError, match="linux-libc-dev"):
            fa.profile()
    finally:
        fa.profile.cache_clear()
