// SPDX-License-Identifier: GPL-2.0
/*
 * lockup_inject - inject hard (irqoff) and soft (preemptoff) lockups on
 * chosen CPUs from debugfs, to test the lockup detectors, and NMIs that
 * nobody claims, to test that a detector leaves them alone.
 *
 *   echo "irqoff 1 8000" > /sys/kernel/debug/lockup_inject/inject
 *   echo "irqoff 1 1200 quiet" > /sys/kernel/debug/lockup_inject/inject
 *   echo "nmi 0,2 1" > /sys/kernel/debug/lockup_inject/inject
 *   cat /sys/kernel/debug/lockup_inject/active
 *   cat /sys/kernel/debug/lockup_inject/log
 *
 * A locked CPU prints a line before it locks up and after. Printing to a
 * serial console touches the hardlockup watchdog of the printing CPU
 * (serial8250_console_write() calls touch_nmi_watchdog()), which costs a
 * detector one check. "quiet" prints nothing on the locked CPU at all: the
 * lockup is then only in the log, with local_clock() times in ns, the
 * clock of the printk timestamps:
 *
 *   lockup <seq> <cpu> <mode> <ms> <start ns> <end ns>
 *   nmi <seq> <cpu> <sent ns>
 *
 * "nmi CPUS N" sends N NMIs, 1-2 ms apart, to each CPU of the list, from the
 * writer: NMIs no handler claims, each one an "unknown reason" NMI.
 * "nmistall CPUS MS" sends each CPU of the list an NMI that this module
 * claims and spins in for MS ms: a CPU stuck in NMI context, which takes
 * no other NMI meanwhile. Logged as "lockup <seq> <cpu> nmistall ...".
 *
 * "defect" does, on request, what a debug kernel's checks must report, to
 * show that they are on and that a report fails the case:
 *
 *   echo lock-inversion > /sys/kernel/debug/lockup_inject/defect
 *   echo sleep-in-atomic > /sys/kernel/debug/lockup_inject/defect
 *   echo smp-processor-id-preemptible > /sys/kernel/debug/lockup_inject/defect
 *
 * "tsc_unstable" marks the TSC unstable, as the clocksource watchdog does
 * when the TSC drifts from the HPET or the ACPI PM timer: what a detector
 * that times its NMIs with the TSC must notice and survive, or hand over.
 *
 *   echo 1 > /sys/kernel/debug/lockup_inject/tsc_unstable
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/cpumask.h>
#include <linux/debugfs.h>
#include <linux/kcsan-checks.h>
#include <linux/kthread.h>
#include <linux/math64.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/percpu.h>
#include <linux/sched/clock.h>
#include <linux/sched/task.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/delay.h>
#include <linux/seq_file.h>
#include <linux/spinlock.h>
#include <linux/timekeeping.h>
#include <asm/apic.h>
#include <asm/nmi.h>
#include <asm/tsc.h>

#define LOCKUP_MAX_MS	600000U

#define NMI_MAX_COUNT	100U
#define LOG_ENTRIES	1024

enum lockup_mode { MODE_IRQOFF, MODE_PREEMPTOFF, MODE_NMI, MODE_NMISTALL };

static const char * const mode_names[] = {
	[MODE_IRQOFF]		= "irqoff",
	[MODE_PREEMPTOFF]	= "preemptoff",
	[MODE_NMI]		= "nmi",
	[MODE_NMISTALL]		= "nmistall",
};

/* What was done, when: read from debugfs, kept until unload. */
struct li_record {
	u64		seq;
	u64		start;
	u64		end;		/* 0 for an NMI */
	unsigned int	cpu;
	unsigned int	ms;
	enum lockup_mode mode;
};

static DEFINE_RAW_SPINLOCK(li_log_lock);
static struct li_record li_log[LOG_ENTRIES];
static u64 li_log_seq;			/* records ever written */

static void li_record(enum lockup_mode mode, unsigned int cpu, unsigned int ms,
		      u64 start, u64 end)
{
	struct li_record *r;
	unsigned long flags;

	raw_spin_lock_irqsave(&li_log_lock, flags);
	r = &li_log[li_log_seq % LOG_ENTRIES];
	*r = (struct li_record){ .seq = li_log_seq, .start = start, .end = end,
				 .cpu = cpu, .ms = ms, .mode = mode };
	li_log_seq++;
	raw_spin_unlock_irqrestore(&li_log_lock, flags);
}

static struct dentry *li_dir;
static DEFINE_MUTEX(li_lock);		/* serializes writers */
static struct cpumask li_mask;		/* protected by li_lock */
static DEFINE_PER_CPU(struct task_struct *, li_task);
static atomic_t li_active;		/* threads still locking up */
static atomic_t li_armed;		/* threads ready to lock up */

/* Set under li_lock before the threads are woken, read-only after. */
static enum lockup_mode li_mode;
static unsigned int li_ms;		/* or the NMI count */
static bool li_quiet;

/*
 * Spin for @ns, timed by the clocksource, which keeps running with
 * interrupts off: jiffies do not, and neither does local_clock() once
 * sched_clock is found unstable. Its fast accessor reads the timekeeper's
 * latch while the tick rewrites it, as the latch is meant to be used;
 * Linux 6.12 does not tell KCSAN so, which would report every spin. Not
 * inlined: a locked CPU's backtrace shows this frame, then the line of
 * its caller that locks up.
 */
static noinline void li_spin_ns(u64 ns)
{
	u64 mono;

	kcsan_disable_current();
	mono = ktime_get_mono_fast_ns();
	while (ktime_get_mono_fast_ns() - mono < ns)
		cpu_relax();
	kcsan_enable_current();
}

static int lockup_fn(void *data)
{
	unsigned int cpu = (unsigned long)data;
	u64 start, end, dur = (u64)li_ms * NSEC_PER_MSEC;

	/*
	 * Lock up together: a CPU locked up early can keep another target's
	 * thread from ever starting (its CPU waits for an IPI to the first).
	 * Waiting is not part of the lockup: let the CPU schedule meanwhile,
	 * or a late partner adds its delay to this CPU's time without
	 * scheduling, and a soft lockup shows up that was never injected.
	 */
	atomic_inc(&li_armed);
	while (atomic_read(&li_armed) < cpumask_weight(&li_mask))
		cond_resched();

	if (!li_quiet)
		pr_warn("cpu %u: %s lockup for %u ms\n", cpu, mode_names[li_mode], li_ms);

	if (li_mode == MODE_IRQOFF)
		local_irq_disable();
	else
		preempt_disable();

	/* The log gets local_clock() times, those of printk */
	start = local_clock();
	li_spin_ns(dur);
	end = local_clock();

	if (li_mode == MODE_IRQOFF)
		local_irq_enable();
	else
		preempt_enable();

	li_record(li_mode, cpu, li_ms, start, end);
	if (!li_quiet)
		pr_warn("cpu %u: released after %llu ms\n", cpu,
			div_u64(end - start, NSEC_PER_MSEC));
	atomic_dec(&li_active);
	return 0;
}

/*
 * Stop and release finished (or never woken) threads.  We hold a task
 * reference, so kthread_stop() is safe even after the thread returned; it
 * also waits for a thread that is still spinning.
 */
static void li_reap(void)
{
	unsigned int cpu;

	for_each_possible_cpu(cpu) {
		struct task_struct *t = per_cpu(li_task, cpu);

		if (t) {
			kthread_stop_put(t);
			per_cpu(li_task, cpu) = NULL;
		}
	}
}

static int li_start(void)
{
	unsigned int cpu;

	for_each_cpu(cpu, &li_mask) {
		struct task_struct *t;

		t = kthread_create(lockup_fn, (void *)(unsigned long)cpu,
				   "lockup_inject/%u", cpu);
		if (IS_ERR(t)) {
			li_reap();
			return PTR_ERR(t);
		}
		kthread_bind(t, cpu);
		get_task_struct(t);
		per_cpu(li_task, cpu) = t;
	}

	atomic_set(&li_active, cpumask_weight(&li_mask));
	atomic_set(&li_armed, 0);

	/*
	 * The writer's own CPU may be a target: wake everything before that
	 * CPU's thread can take it over.
	 */
	preempt_disable();
	for_each_cpu(cpu, &li_mask)
		wake_up_process(per_cpu(li_task, cpu));
	preempt_enable();
	return 0;
}

/* A stall asked of this CPU (ms), and when it ran: written in NMI context */
static DEFINE_PER_CPU(unsigned int, li_stall_ms);
static DEFINE_PER_CPU(u64, li_stall_start);
static DEFINE_PER_CPU(u64, li_stall_end);

/* Takes no lock: it is recorded by the writer, which waits for it */
static int li_nmi_handler(unsigned int type, struct pt_regs *regs)
{
	unsigned int ms = this_cpu_read(li_stall_ms);
	u64 start, end;

	if (!ms || this_cpu_read(li_stall_end))
		return NMI_DONE;

	start = local_clock();
	li_spin_ns((u64)ms * NSEC_PER_MSEC);
	end = local_clock();
	this_cpu_write(li_stall_start, start);
	/* Last: the writer waits for it */
	smp_store_release(this_cpu_ptr(&li_stall_end), end);
	return NMI_HANDLED;
}

static int li_nmi_stall(void)
{
	unsigned int cpu;
	unsigned long deadline = jiffies + msecs_to_jiffies(li_ms + 10000);
	int ret = 0;

	for_each_cpu(cpu, &li_mask) {
		per_cpu(li_stall_end, cpu) = 0;
		WRITE_ONCE(per_cpu(li_stall_ms, cpu), li_ms);
	}
	preempt_disable();
	for_each_cpu(cpu, &li_mask)
		__apic_send_IPI_mask(cpumask_of(cpu), NMI_VECTOR);
	preempt_enable();

	for_each_cpu(cpu, &li_mask) {
		/* Pairs with the release in li_nmi_handler(): start is valid */
		while (!smp_load_acquire(per_cpu_ptr(&li_stall_end, cpu))) {
			if (time_after(jiffies, deadline)) {
				pr_err("cpu %u: no NMI stall within %u ms\n", cpu, li_ms + 10000);
				ret = -ETIMEDOUT;
				break;
			}
			usleep_range(1000, 2000);
		}
		WRITE_ONCE(per_cpu(li_stall_ms, cpu), 0);
		if (!ret)
			li_record(MODE_NMISTALL, cpu, li_ms, per_cpu(li_stall_start, cpu),
				  per_cpu(li_stall_end, cpu));
	}
	return ret;
}

/* NMIs nobody claims, from process context: the "unknown reason" path */
static void li_send_nmis(void)
{
	unsigned int i, cpu;

	for (i = 0; i < li_ms; i++) {
		if (i)
			usleep_range(1000, 2000);
		preempt_disable();
		for_each_cpu(cpu, &li_mask) {
			li_record(MODE_NMI, cpu, 0, local_clock(), 0);
			__apic_send_IPI_mask(cpumask_of(cpu), NMI_VECTOR);
		}
		preempt_enable();
	}
	pr_info("sent %u NMIs to cpus %*pbl\n", li_ms, cpumask_pr_args(&li_mask));
}

static int li_parse(char *buf)
{
	char mode_str[16], list_str[64], ms_str[16], flag_str[16];
	unsigned int max;
	int mode, ret, n;

	n = sscanf(buf, "%15s %63s %15s %15s", mode_str, list_str, ms_str, flag_str);
	if (n < 3 || (n == 4 && strcmp(flag_str, "quiet"))) {
		pr_err("expected \"<mode> <cpulist> <ms|count> [quiet]\"\n");
		return -EINVAL;
	}

	mode = match_string(mode_names, ARRAY_SIZE(mode_names), mode_str);
	if (mode < 0) {
		pr_err("unknown mode '%s'\n", mode_str);
		return -EINVAL;
	}

	max = mode == MODE_NMI ? NMI_MAX_COUNT : LOCKUP_MAX_MS;
	if (kstrtouint(ms_str, 10, &li_ms) || !li_ms || li_ms > max) {
		pr_err("%s must be 1..%u\n", mode == MODE_NMI ? "count" : "ms", max);
		return -EINVAL;
	}
	li_quiet = n == 4;

	ret = cpulist_parse(list_str, &li_mask);
	/* -ERANGE: a CPU number beyond nr_cpu_ids, so not online either. */
	if (ret == -ERANGE || (!ret && !cpumask_subset(&li_mask, cpu_online_mask))) {
		pr_err("cpulist '%s' has a CPU that is not online\n", list_str);
		return -ENODEV;
	}
	if (ret || cpumask_empty(&li_mask)) {
		pr_err("invalid cpulist '%s'\n", list_str);
		return -EINVAL;
	}

	li_mode = mode;
	return 0;
}

static ssize_t inject_write(struct file *file, const char __user *ubuf,
			    size_t count, loff_t *ppos)
{
	char buf[128];
	int ret;

	if (!count || count >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, count))
		return -EFAULT;
	buf[count] = '\0';

	/* A writer holding the lock means a lockup is being started. */
	if (!mutex_trylock(&li_lock))
		return -EBUSY;

	if (atomic_read(&li_active)) {
		ret = -EBUSY;
		goto out;
	}
	li_reap();

	ret = li_parse(buf);
	if (!ret && li_mode == MODE_NMI)
		li_send_nmis();
	else if (!ret && li_mode == MODE_NMISTALL)
		ret = li_nmi_stall();
	else if (!ret)
		ret = li_start();
out:
	mutex_unlock(&li_lock);
	return ret ? ret : count;
}

static const struct file_operations inject_fops = {
	.owner	= THIS_MODULE,
	.write	= inject_write,
	.llseek	= noop_llseek,
};

enum li_defect { DEFECT_LOCK_INVERSION, DEFECT_SLEEP_IN_ATOMIC, DEFECT_CPU_PREEMPTIBLE };

static const char * const defect_names[] = {
	[DEFECT_LOCK_INVERSION]		= "lock-inversion",
	[DEFECT_SLEEP_IN_ATOMIC]	= "sleep-in-atomic",
	[DEFECT_CPU_PREEMPTIBLE]	= "smp-processor-id-preemptible",
};

static DEFINE_MUTEX(li_defect_a);
static DEFINE_MUTEX(li_defect_b);
static DEFINE_SPINLOCK(li_defect_spin);

/*
 * Nothing here deadlocks or sleeps: one task takes both mutexes, in one
 * order and then in the other (lockdep: a possible circular dependency);
 * the mutex taken under the spinlock is free (DEBUG_ATOMIC_SLEEP: its
 * might_sleep() in atomic context); the CPU number is read, and not used,
 * with preemption on (DEBUG_PREEMPT).
 */
static void li_defect(enum li_defect defect)
{
	switch (defect) {
	case DEFECT_LOCK_INVERSION:
		mutex_lock(&li_defect_a);
		mutex_lock(&li_defect_b);
		mutex_unlock(&li_defect_b);
		mutex_unlock(&li_defect_a);
		mutex_lock(&li_defect_b);
		mutex_lock(&li_defect_a);
		mutex_unlock(&li_defect_a);
		mutex_unlock(&li_defect_b);
		break;
	case DEFECT_SLEEP_IN_ATOMIC:
		spin_lock(&li_defect_spin);
		mutex_lock(&li_defect_a);
		mutex_unlock(&li_defect_a);
		spin_unlock(&li_defect_spin);
		break;
	case DEFECT_CPU_PREEMPTIBLE:
		pr_info("defect %s on cpu %d\n", defect_names[defect], smp_processor_id());
		break;
	}
	pr_info("defect %s done\n", defect_names[defect]);
}

static ssize_t defect_write(struct file *file, const char __user *ubuf,
			    size_t count, loff_t *ppos)
{
	char buf[64], *word;
	int defect;

	if (!count || count >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, count))
		return -EFAULT;
	buf[count] = '\0';

	word = strim(buf);
	defect = match_string(defect_names, ARRAY_SIZE(defect_names), word);
	if (defect < 0) {
		pr_err("unknown defect '%s'\n", word);
		return -EINVAL;
	}
	li_defect(defect);
	return count;
}

static const struct file_operations defect_fops = {
	.owner	= THIS_MODULE,
	.write	= defect_write,
	.llseek	= noop_llseek,
};

static ssize_t tsc_unstable_write(struct file *file, const char __user *ubuf,
				  size_t count, loff_t *ppos)
{
	bool on;

	if (kstrtobool_from_user(ubuf, count, &on) || !on)
		return -EINVAL;
	pr_info("marking the TSC unstable\n");
	mark_tsc_unstable("lockup_inject");
	return count;
}

static const struct file_operations tsc_unstable_fops = {
	.owner	= THIS_MODULE,
	.write	= tsc_unstable_write,
	.llseek	= noop_llseek,
};

static int log_show(struct seq_file *m, void *v)
{
	u64 seq, first;
	unsigned long flags;
	struct li_record r;

	raw_spin_lock_irqsave(&li_log_lock, flags);
	seq = li_log_seq;
	raw_spin_unlock_irqrestore(&li_log_lock, flags);
	first = seq > LOG_ENTRIES ? seq - LOG_ENTRIES : 0;

	for (; first < seq; first++) {
		raw_spin_lock_irqsave(&li_log_lock, flags);
		r = li_log[first % LOG_ENTRIES];
		raw_spin_unlock_irqrestore(&li_log_lock, flags);
		if (r.seq != first)
			continue;	/* overwritten meanwhile */
		if (r.mode == MODE_NMI)
			seq_printf(m, "nmi %llu %u %llu\n", r.seq, r.cpu, r.start);
		else
			seq_printf(m, "lockup %llu %u %s %u %llu %llu\n", r.seq, r.cpu,
				   mode_names[r.mode], r.ms, r.start, r.end);
	}
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(log);

static int __init lockup_inject_init(void)
{
	int ret = register_nmi_handler(NMI_LOCAL, li_nmi_handler, 0, KBUILD_MODNAME);

	if (ret)
		return ret;
	li_dir = debugfs_create_dir("lockup_inject", NULL);
	debugfs_create_file("inject", 0200, li_dir, NULL, &inject_fops);
	debugfs_create_file("defect", 0200, li_dir, NULL, &defect_fops);
	debugfs_create_file("tsc_unstable", 0200, li_dir, NULL, &tsc_unstable_fops);
	debugfs_create_file("log", 0444, li_dir, NULL, &log_fops);
	debugfs_create_atomic_t("active", 0444, li_dir, &li_active);
	return 0;
}

static void __exit lockup_inject_exit(void)
{
	/* No more writers after this; then wait for running lockups. */
	debugfs_remove_recursive(li_dir);
	li_reap();
	unregister_nmi_handler(NMI_LOCAL, KBUILD_MODNAME);
}

module_init(lockup_inject_init);
module_exit(lockup_inject_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Inject hard/soft lockups on chosen CPUs via debugfs");
