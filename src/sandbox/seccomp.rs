//! The syscall filter bubblewrap installs just before it runs user code.
//!
//! It refuses what user code never needs and what widens the kernel's attack surface:
//! - tracing other processes: `ptrace`, `process_vm_readv/writev`, `kcmp`;
//! - filesystems and namespaces: `mount`, `umount2`, `pivot_root`, `chroot`, `setns`,
//!   `open_by_handle_at` (the classic container escape), `name_to_handle_at`, `fsopen` and
//!   the new mount API, and `unshare`/`clone` with `CLONE_NEWUSER`;
//! - the kernel itself: `kexec_*`, `init_module`, `finit_module`, `delete_module`, `reboot`,
//!   `swapon`/`swapoff`, `acct`, `quotactl`, `syslog`, `iopl`/`ioperm`;
//! - rarely used, often exploited interfaces: `bpf`, `perf_event_open`, `userfaultfd`,
//!   `keyctl`, `add_key`, `request_key`, `lookup_dcookie`, `modify_ldt` (x86);
//! - `personality` with anything but the default (`PER_LINUX`) or the query `0xffffffff`
//!   (other personalities turn off address randomisation or emulate old kernels).
//!
//! A kernel template (`fork`) gets a filter of its own: the same, but the mount calls its
//! forks need to build their sandbox; each fork installs the full filter on top.
//!
//! These answer `EPERM`. `clone3` and io_uring (`io_uring_setup`, `_enter`, `_register`)
//! answer `ENOSYS` instead, as on a kernel without them: `clone3`'s flags live in a struct
//! that seccomp cannot inspect, and glibc falls back to `clone` (which we can inspect) only
//! on `ENOSYS`; a ring performs reads, writes and opens that no filter ever sees, and
//! libraries that try io_uring fall back to plain system calls on `ENOSYS`.

use std::collections::BTreeMap;
use std::io::{Seek, Write};
use std::os::fd::OwnedFd;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

const REFUSED: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_setns,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_lookup_dcookie,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_modify_ldt,
];

/// Answered `ENOSYS`, as if this kernel did not have them.
const ABSENT: &[i64] = &[
    libc::SYS_clone3,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// `personality(2)` arguments user code may pass: the default, and the query.
const PER_LINUX: u64 = 0;
const PERSONALITY_QUERY: u64 = 0xffff_ffff;

fn arch() -> TargetArch {
    if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    }
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<BpfProgram, String> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch(),
    )
    .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

fn new_user_namespace_flag() -> Result<SeccompRule, String> {
    let flag = libc::CLONE_NEWUSER as u64;
    let cond = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(flag),
        flag,
    )
    .map_err(|e| e.to_string())?;
    SeccompRule::new(vec![cond]).map_err(|e| e.to_string())
}

/// `personality` is refused unless its argument is `PER_LINUX` or the query.
fn other_personality() -> Result<SeccompRule, String> {
    let not = |value: u64| {
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, value)
            .map_err(|e| e.to_string())
    };
    SeccompRule::new(vec![not(PER_LINUX)?, not(PERSONALITY_QUERY)?]).map_err(|e| e.to_string())
}

/// What a kernel template's forks need of `REFUSED` to build their sandbox (see `fork`).
const FORK_NEEDS: &[i64] = &[libc::SYS_mount, libc::SYS_move_mount, libc::SYS_open_tree];

/// The filters as raw `sock_filter` arrays, the format bubblewrap reads from `--add-seccomp-fd`.
pub struct Filters {
    programs: Vec<Vec<u8>>,
    /// The kernel template's own: `REFUSED` but what its forks need, and `ABSENT`. Its forks
    /// install `programs` on top before user code runs.
    template: Vec<Vec<u8>>,
}

fn to_bytes(program: &BpfProgram) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * 8);
    for ins in program {
        out.extend_from_slice(&ins.code.to_ne_bytes());
        out.push(ins.jt);
        out.push(ins.jf);
        out.extend_from_slice(&ins.k.to_ne_bytes());
    }
    out
}

impl Filters {
    pub fn build() -> Result<Self, String> {
        let mut refused: BTreeMap<i64, Vec<SeccompRule>> =
            REFUSED.iter().map(|&nr| (nr, Vec::new())).collect();
        refused.insert(libc::SYS_unshare, vec![new_user_namespace_flag()?]);
        refused.insert(libc::SYS_clone, vec![new_user_namespace_flag()?]);
        refused.insert(libc::SYS_personality, vec![other_personality()?]);
        let absent: BTreeMap<i64, Vec<SeccompRule>> =
            ABSENT.iter().map(|&nr| (nr, Vec::new())).collect();
        let template: BTreeMap<i64, Vec<SeccompRule>> = REFUSED
            .iter()
            .filter(|nr| !FORK_NEEDS.contains(nr))
            .map(|&nr| (nr, Vec::new()))
            .collect();
        let absent_bytes = to_bytes(&compile(absent, libc::ENOSYS)?);
        Ok(Filters {
            programs: vec![
                to_bytes(&compile(refused, libc::EPERM)?),
                absent_bytes.clone(),
            ],
            template: vec![to_bytes(&compile(template, libc::EPERM)?), absent_bytes],
        })
    }

    /// One fresh in-memory file per filter, positioned at the start, for one sandbox
    /// (a shared descriptor would share its read offset between concurrent launches).
    pub fn memfds(&self) -> std::io::Result<Vec<OwnedFd>> {
        Self::files(&self.programs)
    }

    /// `memfds` of the kernel template's own filters.
    pub fn template_memfds(&self) -> std::io::Result<Vec<OwnedFd>> {
        Self::files(&self.template)
    }

    fn files(programs: &[Vec<u8>]) -> std::io::Result<Vec<OwnedFd>> {
        programs
            .iter()
            .map(|bytes| {
                let fd = rustix::fs::memfd_create("seccomp", rustix::fs::MemfdFlags::CLOEXEC)?;
                let mut file = std::fs::File::from(fd);
                file.write_all(bytes)?;
                file.rewind()?;
                Ok(OwnedFd::from(file))
            })
            .collect()
    }
}
