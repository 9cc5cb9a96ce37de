/*
 * nsbox-run-init: PID 1 of a warm run (the nested shape, warm.rs).
 *
 * The zygote clones the run's first process with CLONE_VM|CLONE_VFORK into the run's
 * namespaces; that process forks the run's Python (the only copy of the zygote's image)
 * and then execs this program, so PID 1 leaves the zygote's address space at once instead
 * of holding a second copy of it (that process also started the run's session, so Python
 * is in our process group). Python (PID 2, our child) builds the sandbox itself;
 * this init only reaps: it waits for Python, reports its wait status to the supervisor on
 * fd 3 in the report pipe's 12-byte record (child.rs `Record`), and leaves, which makes
 * the kernel end everything else in the namespace. Orphans are re-parented here and
 * reaped on the way.
 *
 * It runs with no capability (it was exec'd before the namespace's ids were mapped) and
 * no libc: a handful of raw system calls, so it is a few KiB, and its only input is the
 * kernel's wait status.
 */

#define SYS_write 1
#define SYS_close 3
#define SYS_rt_sigprocmask 14
#define SYS_exit 60
#define SYS_wait4 61
#define SYS_prctl 157
#define SYS_close_range 436

#define PR_SET_DUMPABLE 4
#define PR_SET_NAME 15
#define PR_SET_NO_NEW_PRIVS 38
#define SIG_SETMASK 2
#define EINTR 4

#define REPORT_FD 3
/* The Python process: the first process this namespace has after its init. */
#define PYTHON_PID 2
/* child.rs Record kinds, and failure.rs Step::StartPython (checked by a unit test there). */
#define RECORD_FAILED 1
#define RECORD_PYTHON_STATUS 2
#define STEP_START_PYTHON 14

static long sys3(long n, long a, long b, long c)
{
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return ret;
}

static long sys4(long n, long a, long b, long c, long d)
{
	long ret;
	register long r10 __asm__("r10") = d;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
			 : "rcx", "r11", "memory");
	return ret;
}

static void put_le32(unsigned char *out, unsigned int v)
{
	out[0] = v & 0xff;
	out[1] = (v >> 8) & 0xff;
	out[2] = (v >> 16) & 0xff;
	out[3] = (v >> 24) & 0xff;
}

static __attribute__((noreturn)) void report_and_exit(unsigned int kind, unsigned int a,
						      int b, int code)
{
	unsigned char record[12];
	put_le32(record, kind);
	put_le32(record + 4, a);
	put_le32(record + 8, (unsigned int)b);
	sys3(SYS_write, REPORT_FD, (long)record, sizeof record);
	for (;;)
		sys3(SYS_exit, code, 0, 0);
}

__attribute__((noreturn, used)) void nsbox_run_init(void)
{
	/* Keep only the report pipe: the zygote's descriptors came through the exec, and
	 * holding a run's output pipes would hide their EOF from the supervisor. */
	if (sys3(SYS_close_range, 0, REPORT_FD - 1, 0) != 0)
		for (long fd = 0; fd < REPORT_FD; fd++)
			sys3(SYS_close, fd, 0, 0);
	if (sys3(SYS_close_range, REPORT_FD + 1, ~0U, 0) != 0)
		for (long fd = REPORT_FD + 1; fd < 4096; fd++)
			sys3(SYS_close, fd, 0, 0);
	/* Named as its argv[0] says (an exec from a descriptor would be named by its number). */
	sys3(SYS_prctl, PR_SET_NAME, (long)"nsbox-run-init", 0);
	/* Never dumpable, so the run's code cannot reach this process through /proc. */
	sys3(SYS_prctl, PR_SET_DUMPABLE, 0, 0);
	sys3(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0);
	unsigned long none = 0;
	sys4(SYS_rt_sigprocmask, SIG_SETMASK, (long)&none, 0, sizeof none);

	for (;;) {
		int status = 0;
		long pid = sys4(SYS_wait4, -1, (long)&status, 0, 0);
		if (pid == PYTHON_PID) {
			/* As child.rs's init reports it: the exit code shifted, or the signal. */
			int reported = (status & 0x7f) == 0 ? status : (status & 0x7f);
			report_and_exit(RECORD_PYTHON_STATUS, 0, reported, 0);
		}
		if (pid > 0 || pid == -EINTR)
			continue;
		report_and_exit(RECORD_FAILED, STEP_START_PYTHON, (int)-pid, 1);
	}
}

/* The entry point: an aligned stack, then the init. */
__attribute__((naked, noreturn)) void _start(void)
{
	__asm__("xor %ebp, %ebp\n\t"
		"and $-16, %rsp\n\t"
		"call nsbox_run_init\n\t"
		"hlt");
}
