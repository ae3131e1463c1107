// SPDX-License-Identifier: GPL-2.0
/*
 * lockup_inject - inject hard (irqoff) and soft (preemptoff) lockups on
 * chosen CPUs from debugfs, to test the lockup detectors.
 *
 *   echo "irqoff 1 8000" > /sys/kernel/debug/lockup_inject/inject
 *   cat /sys/kernel/debug/lockup_inject/active
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/cpumask.h>
#include <linux/debugfs.h>
#include <linux/kthread.h>
#include <linux/math64.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/percpu.h>
#include <linux/sched/clock.h>
#include <linux/sched/task.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#define LOCKUP_MAX_MS	600000U

enum lockup_mode { MODE_IRQOFF, MODE_PREEMPTOFF };

static const char * const mode_names[] = {
	[MODE_IRQOFF]		= "irqoff",
	[MODE_PREEMPTOFF]	= "preemptoff",
};

static struct dentry *li_dir;
static DEFINE_MUTEX(li_lock);		/* serializes writers */
static struct cpumask li_mask;		/* protected by li_lock */
static DEFINE_PER_CPU(struct task_struct *, li_task);
static atomic_t li_active;		/* threads still locking up */
static atomic_t li_armed;		/* threads ready to lock up */

/* Set under li_lock before the threads are woken, read-only after. */
static enum lockup_mode li_mode;
static unsigned int li_ms;

static int lockup_fn(void *data)
{
	unsigned int cpu = (unsigned long)data;
	u64 start, dur = (u64)li_ms * NSEC_PER_MSEC;

	/*
	 * Lock up together: a CPU locked up early can keep another target's
	 * thread from ever starting (its CPU waits for an IPI to the first).
	 */
	atomic_inc(&li_armed);
	while (atomic_read(&li_armed) < cpumask_weight(&li_mask))
		cpu_relax();

	pr_warn("cpu %u: %s lockup for %u ms\n", cpu, mode_names[li_mode], li_ms);

	if (li_mode == MODE_IRQOFF)
		local_irq_disable();
	else
		preempt_disable();

	/* local_clock() keeps running with interrupts off, jiffies may not. */
	start = local_clock();
	while (local_clock() - start < dur)
		cpu_relax();

	if (li_mode == MODE_IRQOFF)
		local_irq_enable();
	else
		preempt_enable();

	pr_warn("cpu %u: released after %llu ms\n", cpu,
		div_u64(local_clock() - start, NSEC_PER_MSEC));
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

static int li_parse(char *buf)
{
	char mode_str[16], list_str[64], ms_str[16];
	int mode, ret;

	if (sscanf(buf, "%15s %63s %15s", mode_str, list_str, ms_str) != 3) {
		pr_err("expected \"<mode> <cpulist> <ms>\"\n");
		return -EINVAL;
	}

	mode = match_string(mode_names, ARRAY_SIZE(mode_names), mode_str);
	if (mode < 0) {
		pr_err("unknown mode '%s'\n", mode_str);
		return -EINVAL;
	}

	if (kstrtouint(ms_str, 10, &li_ms) || !li_ms || li_ms > LOCKUP_MAX_MS) {
		pr_err("ms must be 1..%u\n", LOCKUP_MAX_MS);
		return -EINVAL;
	}

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
	if (!ret)
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

static int __init lockup_inject_init(void)
{
	li_dir = debugfs_create_dir("lockup_inject", NULL);
	debugfs_create_file("inject", 0200, li_dir, NULL, &inject_fops);
	debugfs_create_atomic_t("active", 0444, li_dir, &li_active);
	return 0;
}

static void __exit lockup_inject_exit(void)
{
	/* No more writers after this; then wait for running lockups. */
	debugfs_remove_recursive(li_dir);
	li_reap();
}

module_init(lockup_inject_init);
module_exit(lockup_inject_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Inject hard/soft lockups on chosen CPUs via debugfs");
