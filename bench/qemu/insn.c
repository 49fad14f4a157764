/*
 * A QEMU TCG plugin for `instore-bench instructions --arch`: counts the guest instructions a
 * program executes between two marker system calls, so that a bench run under qemu-user gives
 * instructions per advert on the gateway architectures (aarch64, armv7) without counting the
 * set-up around the measured loop.
 *
 * The program marks the region by seeking /dev/null to MARK_START, then to MARK_STOP (the bench's
 * crates forbid unsafe code, so no raw system call: a seek is a safe one whose argument the
 * plugin sees). aarch64's lseek passes the offset as argument 2, armv7's _llseek as argument 3
 * (the low word; argument 2, the high word, is 0). Each stop adds the instructions since the
 * last start to the total, which is written at exit to the file named by `outfile=PATH` (or to
 * qemu's log) as "marked <n> total <n> marks <n>".
 *
 * Written against QEMU's plugin API version 1 (QEMU 7.2, Debian 12's qemu-user); declared here
 * rather than included because Debian ships no qemu-plugin.h. Counting is inline (one add per
 * translated block executed, of that block's instruction count), so threads other than the
 * measured one add to the same counter: the bench's measured loops run on one thread.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index,
                                              int64_t num, uint64_t a1, uint64_t a2, uint64_t a3,
                                              uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7,
                                              uint64_t a8);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_outs(const char *string);

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

/* Must match bench/src/marker.rs; below 2^31 so that they are one word on armv7 too. */
#define MARK_START 0x7a1157a7u
#define MARK_STOP 0x7a1157b0u

static uint64_t executed;
static uint64_t started_at;
static uint64_t marked;
static uint64_t marks;
static int running;
static char outfile[4096];

static void on_tb(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed,
                                             qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8)
{
    (void)id; (void)vcpu; (void)num; (void)a1; (void)a4; (void)a5; (void)a6; (void)a7; (void)a8;
    if (a2 == MARK_START || a3 == MARK_START) {
        started_at = executed;
        running = 1;
    } else if ((a2 == MARK_STOP || a3 == MARK_STOP) && running) {
        marked += executed - started_at;
        marks++;
        running = 0;
    }
}

static void at_exit_cb(qemu_plugin_id_t id, void *userdata)
{
    (void)id; (void)userdata;
    char line[128];
    snprintf(line, sizeof line, "marked %" PRIu64 " total %" PRIu64 " marks %" PRIu64 "\n",
             marked, executed, marks);
    FILE *f = outfile[0] ? fopen(outfile, "w") : NULL;
    if (f) {
        fputs(line, f);
        fclose(f);
    } else {
        qemu_plugin_outs(line);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "outfile=", 8) == 0) {
            snprintf(outfile, sizeof outfile, "%s", argv[i] + 8);
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, at_exit_cb, NULL);
    return 0;
}
