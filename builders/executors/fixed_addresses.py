"""Nodes whose outputs depend on memory addresses run with address-space randomization off.

Why: TVM's relax `VMShapeLower` pass (src/relax/backend/vm/vm_shape_lower.cc) keeps its shape slots in an
`std::unordered_map<PrimExpr, PrimExprSlot*, StructuralHash, ExprDeepEqual>` and `PopulateSlotInfo()`
iterates that map to fill each slot's `user_slots`. The structural hash of a free `tir.Var` is its object's
address (checked in the mlc image: `tvm_ffi.structural_hash(tirx.Var("n", "int64"))` differs from run to
run, and is the same in every run with ASLR off and a fixed PYTHONHASHSEED). So the order of the stores in
every generated `shape_func` follows heap addresses, and the compiled library's bytes differ run to run
(same code, different instruction order). The pass is compiled C++ in the toolchain image, and the build
calls it through mlc_llm's own pipeline, so this project cannot reorder it; it fixes the addresses instead:
- the node's command runs under `setarch -R` (personality ADDR_NO_RANDOMIZE) with PYTHONHASHSEED=0, which
  makes the allocation sequence, and so every address, the same in each run;
- Docker's default seccomp profile refuses personality(ADDR_NO_RANDOMIZE), so these containers get a
  profile generated here: every syscall of this architecture's table (the kernel headers' unistd list)
  except those Docker's default profile refuses a container without capabilities (below), with
  personality() limited to Docker's allowed values plus ADDR_NO_RANDOMIZE (0x0040000), and clone() limited
  to calls without namespace flags. Only nodes of FIXED_ADDRESS_KINDS get it; every other container keeps
  Docker's default profile.
"""

from __future__ import annotations

import json
import platform
import re
from functools import lru_cache
from pathlib import Path

from builders.errors import ToolchainError

FIXED_ADDRESS_KINDS = frozenset({"mlc-compile"})
ADDR_NO_RANDOMIZE = 0x0040000
# personality() values Docker's default profile allows (PER_LINUX, PER_LINUX32, UNAME26 and their union,
# and the query 0xffffffff), and ADDR_NO_RANDOMIZE as setarch -R sets it
PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF, ADDR_NO_RANDOMIZE)
CLONE_NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
ENOSYS = 38
# refused, as in Docker's default profile for a container without capabilities: kernel modules, kexec,
# reboot, clocks, mounts and namespaces, tracing other processes, keyrings, BPF, perf, NUMA policy,
# handles, swap, accounting, io_uring, legacy/obsolete calls
REFUSED = frozenset("""
acct add_key bpf chroot clock_adjtime clock_settime clock_settime64 create_module delete_module
fanotify_init finit_module fsconfig fsmount fsopen fspick get_kernel_syms get_mempolicy init_module
io_uring_enter io_uring_register io_uring_setup ioperm iopl kcmp kexec_file_load kexec_load keyctl
lookup_dcookie mbind mount mount_setattr move_mount move_pages name_to_handle_at nfsservctl
open_by_handle_at open_tree perf_event_open pidfd_getfd pivot_root process_vm_readv process_vm_writev
ptrace query_module quotactl quotactl_fd reboot request_key set_mempolicy setns settimeofday stime
swapoff swapon syslog sysfs _sysctl umount umount2 unshare uselib userfaultfd ustat vhangup vm86 vm86old
""".split())
CONDITIONAL = frozenset({"personality", "clone", "clone3"})
SYSCALL_TABLES = {
    "x86_64": ("SCMP_ARCH_X86_64", Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")),
    "aarch64": ("SCMP_ARCH_AARCH64", Path("/usr/include/asm-generic/unistd.h")),
}


def wanted(spec: dict) -> bool:
    return spec.get("kind") in FIXED_ADDRESS_KINDS


def command(cmd: list[str]) -> list[str]:
    return ["setarch", "-R", *cmd]


def syscall_names(table: Path) -> list[str]:
    names = sorted(set(re.findall(r"^#define __NR_(\w+)\s+\d+", table.read_text(), re.M)))
    if len(names) < 200:
        raise ToolchainError(f"{table}: lists {len(names)} syscalls; expected the kernel's full table")
    return names


@lru_cache(maxsize=1)
def profile() -> str:
    """The seccomp profile (Docker's JSON format) for FIXED_ADDRESS_KINDS containers on this machine."""
    machine = platform.machine()
    if machine not in SYSCALL_TABLES:
        raise ToolchainError(f"an mlc compile node needs a seccomp profile for {machine}; only "
                             f"{', '.join(SYSCALL_TABLES)} are known")
    arch, table = SYSCALL_TABLES[machine]
    if not table.is_file():
        raise ToolchainError(f"{table} is missing: the seccomp profile of mlc compile nodes is generated from "
                             "the kernel's syscall table; install linux-libc-dev (apt-get install linux-libc-dev)")
    allowed = [n for n in syscall_names(table) if n not in REFUSED and n not in CONDITIONAL]
    rules = [
        {"names": allowed, "action": "SCMP_ACT_ALLOW"},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
        # glibc falls back to clone() when clone3 is "not implemented" (its flags can't be inspected)
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
    ] + [{"names": ["personality"], "action": "SCMP_ACT_ALLOW",
          "args": [{"index": 0, "value": v, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]} for v in PERSONALITIES]
    return json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "architectures": [arch],
                       "syscalls": rules}, sort_keys=True)


def security_opt() -> str:
    return "seccomp=" + profile()
