//! Where each kernel program attaches.

/// Where a program attaches: a tracepoint, and whether the sensor can run
/// without it (tracepoints of syscalls that older kernels lack).
pub(crate) struct Attachment {
    pub program: &'static str,
    pub category: &'static str,
    pub name: &'static str,
    pub optional: bool,
}

const fn at(program: &'static str, category: &'static str, name: &'static str) -> Attachment {
    Attachment {
        program,
        category,
        name,
        optional: false,
    }
}

const fn optional(program: &'static str, category: &'static str, name: &'static str) -> Attachment {
    Attachment {
        optional: true,
        ..at(program, category, name)
    }
}

/// Every attachment of every program in the object. A program listed more
/// than once is loaded once and attached to each tracepoint. docs/sensor.md
/// says why each hook was chosen.
pub(crate) const ATTACHMENTS: &[Attachment] = &[
    at("starling_exec", "sched", "sched_process_exec"),
    at("starling_fork", "task", "task_newtask"),
    at("starling_exit", "sched", "sched_process_exit"),
    at("starling_tcp_state", "sock", "inet_sock_set_state"),
    at("starling_accept_exit", "syscalls", "sys_exit_accept"),
    at("starling_accept_exit", "syscalls", "sys_exit_accept4"),
    at("starling_bind_exit", "syscalls", "sys_exit_bind"),
    // Linux 6.3+; older kernels see DNS only from sendmmsg.
    optional("starling_udp_send", "sock", "sock_send_length"),
    at("starling_sendmmsg_exit", "syscalls", "sys_exit_sendmmsg"),
    at("starling_open_exit", "syscalls", "sys_exit_openat"),
    optional("starling_open_exit", "syscalls", "sys_exit_open"),
    optional("starling_open_exit", "syscalls", "sys_exit_creat"),
    optional("starling_open_exit", "syscalls", "sys_exit_openat2"),
    optional(
        "starling_open_exit",
        "syscalls",
        "sys_exit_open_by_handle_at",
    ),
    optional("starling_enter_unlink", "syscalls", "sys_enter_unlink"),
    at("starling_enter_unlinkat", "syscalls", "sys_enter_unlinkat"),
    optional("starling_enter_rename", "syscalls", "sys_enter_rename"),
    optional("starling_enter_renameat", "syscalls", "sys_enter_renameat"),
    at(
        "starling_enter_renameat2",
        "syscalls",
        "sys_enter_renameat2",
    ),
    optional("starling_enter_chmod", "syscalls", "sys_enter_chmod"),
    at("starling_enter_fchmod", "syscalls", "sys_enter_fchmod"),
    at("starling_enter_fchmodat", "syscalls", "sys_enter_fchmodat"),
    optional(
        "starling_enter_fchmodat2",
        "syscalls",
        "sys_enter_fchmodat2",
    ),
    optional("starling_file_exit", "syscalls", "sys_exit_unlink"),
    at("starling_file_exit", "syscalls", "sys_exit_unlinkat"),
    optional("starling_file_exit", "syscalls", "sys_exit_rename"),
    optional("starling_file_exit", "syscalls", "sys_exit_renameat"),
    at("starling_file_exit", "syscalls", "sys_exit_renameat2"),
    optional("starling_file_exit", "syscalls", "sys_exit_chmod"),
    at("starling_file_exit", "syscalls", "sys_exit_fchmod"),
    at("starling_file_exit", "syscalls", "sys_exit_fchmodat"),
    optional("starling_file_exit", "syscalls", "sys_exit_fchmodat2"),
    at("starling_enter_setuid", "syscalls", "sys_enter_setuid"),
    at("starling_enter_setreuid", "syscalls", "sys_enter_setreuid"),
    at(
        "starling_enter_setresuid",
        "syscalls",
        "sys_enter_setresuid",
    ),
    at("starling_enter_setgid", "syscalls", "sys_enter_setgid"),
    at("starling_enter_setregid", "syscalls", "sys_enter_setregid"),
    at(
        "starling_enter_setresgid",
        "syscalls",
        "sys_enter_setresgid",
    ),
    at("starling_enter_capset", "syscalls", "sys_enter_capset"),
    at("starling_cred_exit", "syscalls", "sys_exit_setuid"),
    at("starling_cred_exit", "syscalls", "sys_exit_setreuid"),
    at("starling_cred_exit", "syscalls", "sys_exit_setresuid"),
    at("starling_cred_exit", "syscalls", "sys_exit_setgid"),
    at("starling_cred_exit", "syscalls", "sys_exit_setregid"),
    at("starling_cred_exit", "syscalls", "sys_exit_setresgid"),
    at("starling_cred_exit", "syscalls", "sys_exit_capset"),
    at("starling_enter_ptrace", "syscalls", "sys_enter_ptrace"),
    at(
        "starling_enter_memfd_create",
        "syscalls",
        "sys_enter_memfd_create",
    ),
    at("starling_enter_bpf", "syscalls", "sys_enter_bpf"),
    at("starling_tamper_exit", "syscalls", "sys_exit_ptrace"),
    at("starling_tamper_exit", "syscalls", "sys_exit_memfd_create"),
    at("starling_tamper_exit", "syscalls", "sys_exit_bpf"),
    at("starling_cgroup_mkdir", "cgroup", "cgroup_mkdir"),
    // Only kernels built with module support have it.
    optional("starling_module_load", "module", "module_load"),
];
