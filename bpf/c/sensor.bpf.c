// SPDX-License-Identifier: GPL-2.0
/* The sensor's kernel programs, one object so that they share one ring
 * buffer and one loss map. Which hook serves which event, and why:
 * docs/sensor.md. */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "common.h"
#include "path.h"
#include "syscall.h"

char LICENSE[] SEC("license") = "GPL";

#include "cred.bpf.c"
#include "process.bpf.c"
#include "net.bpf.c"
#include "files.bpf.c"
#include "tamper.bpf.c"
