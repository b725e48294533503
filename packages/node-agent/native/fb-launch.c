/*
 * fb-launch: the jailer every QEMU of Firebreak starts through. The node runs
 * it as root; it prepares the process and then executes QEMU with nothing
 * root could give it by mistake:
 *
 *   fb-launch --uid U --gid G [--groups G1,G2...] [--parent PID] [--netns PATH]
 *             [--tap NAME --tap-fd N] [--cgroup-procs FILE]... [--readonly-root]
 *             [--writable-file PATH] [--exec PATH] -- PROGRAM ARGS...
 *
 * In order:
 *  1. joins each cgroup (writes its own pid to every cgroup.procs given), so
 *     QEMU's first instruction, first allocation and every thread it starts
 *     are already counted and limited;
 *  2. joins the sandbox's network namespace;
 *  3. opens /dev/net/tun as root and attaches it to the namespace's tap
 *     (TUNSETIFF), leaving the descriptor open at number N for QEMU's
 *     `-netdev tap,fd=N`: nothing depends on the device node's mode, which is
 *     0600 on many hosts;
 *  4. with --readonly-root, moves into a mount namespace of its own in which
 *     every mount is read-only: QEMU can create or change no file anywhere
 *     (its disks, sockets and saved state are descriptors it inherited);
 *     --writable-file PATH (a regular file of root's) is the one exception: a
 *     bind mount of that file alone, writable (a snapshot maker's guest RAM,
 *     which QEMU opens by path; its mode still decides who may write it);
 *  5. drops root for good: bounding set emptied, supplementary groups set to
 *     exactly --groups (none without it: a fork point's group, so QEMU may
 *     open that fork point's memory file and no other's), gid and uid set
 *     (real, effective, saved), capabilities and ambient set
 *     cleared, no_new_privs; and asks for SIGKILL when the node process
 *     (its parent) dies, so no VM outlives its supervisor;
 *  6. executes PROGRAM (looked up in PATH), or the file --exec names with
 *     PROGRAM as its argv[0].
 *
 * Any failure prints one line on stderr and exits 126 without running
 * PROGRAM. Every descriptor it opens itself is close-on-exec except the tap.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_CGROUPS 8
#define MAX_GROUPS 4

static void die(const char *what) {
  fprintf(stderr, "fb-launch: %s: %s\n", what, errno ? strerror(errno) : "invalid");
  exit(126);
}

static long parse_id(const char *s, const char *what) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *s == '\0' || *end != '\0' || v < 0) {
    errno = 0;
    die(what);
  }
  return v;
}

static void join_cgroup(const char *procs) {
  int fd = open(procs, O_WRONLY | O_CLOEXEC);
  if (fd < 0) die(procs);
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
  if (write(fd, buf, (size_t)n) != n) die(procs);
  close(fd);
}

static void join_netns(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die(path);
  if (setns(fd, CLONE_NEWNET) != 0) die("setns");
  close(fd);
}

static void open_tap(const char *name, int want_fd) {
  if (strlen(name) >= IFNAMSIZ) {
    errno = 0;
    die("tap name too long");
  }
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  if (fd < 0) die("/dev/net/tun");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) != 0) die("TUNSETIFF");
  if (fd == want_fd) {
    if (fcntl(fd, F_SETFD, 0) != 0) die("fcntl");
  } else {
    // dup2 leaves the new descriptor without close-on-exec.
    if (dup2(fd, want_fd) != want_fd) die("dup2");
    close(fd);
  }
}

/* Every mount this process sees becomes read-only, in a namespace of its own. */
static void readonly_root(void) {
  if (unshare(CLONE_NEWNS) != 0) die("unshare(CLONE_NEWNS)");
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) die("make mounts private");
  FILE *f = fopen("/proc/self/mountinfo", "re");
  if (!f) die("/proc/self/mountinfo");
  char *line = NULL;
  size_t cap = 0;
  while (getline(&line, &cap, f) > 0) {
    // Field 5 is the mount point (octal escapes for spaces and the like).
    char *save = NULL, *field = strtok_r(line, " ", &save);
    for (int i = 1; field && i < 5; i++) field = strtok_r(NULL, " ", &save);
    if (!field) continue;
    char mp[4096];
    size_t j = 0;
    for (const char *p = field; *p && j < sizeof mp - 1; p++) {
      if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] >= '0' && p[2] <= '7' && p[3] >= '0' &&
          p[3] <= '7') {
        mp[j++] = (char)((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
        p += 3;
      } else {
        mp[j++] = *p;
      }
    }
    mp[j] = '\0';
    // Each mount keeps its own nosuid/nodev/noexec/atime flags; MS_RDONLY is added.
    struct statvfs st;
    if (statvfs(mp, &st) != 0) {
      if (errno == ENOENT || errno == EACCES) continue; // gone since, or hidden under another mount
      fprintf(stderr, "fb-launch: statvfs %s: %s\n", mp, strerror(errno));
      exit(126);
    }
    unsigned long flags = MS_REMOUNT | MS_BIND | MS_RDONLY;
    if (st.f_flag & ST_NOSUID) flags |= MS_NOSUID;
    if (st.f_flag & ST_NODEV) flags |= MS_NODEV;
    if (st.f_flag & ST_NOEXEC) flags |= MS_NOEXEC;
    if (st.f_flag & ST_NOATIME) flags |= MS_NOATIME;
    if (st.f_flag & ST_NODIRATIME) flags |= MS_NODIRATIME;
    if (st.f_flag & ST_RELATIME) flags |= MS_RELATIME;
    if (mount(NULL, mp, NULL, flags, NULL) != 0) {
      fprintf(stderr, "fb-launch: read-only remount of %s: %s\n", mp, strerror(errno));
      exit(126);
    }
  }
  free(line);
  fclose(f);
}

/* "g1,g2,..." (each a positive id) into out; returns the count. */
static int parse_groups(const char *s, gid_t *out) {
  int n = 0;
  char *copy = strdup(s), *save = NULL;
  if (!copy) die("strdup");
  for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    if (n >= MAX_GROUPS) {
      errno = 0;
      die("--groups: too many");
    }
    long g = parse_id(t, "--groups");
    if (g <= 0) {
      errno = 0;
      die("--groups: root's group");
    }
    out[n++] = (gid_t)g;
  }
  free(copy);
  return n;
}

/* One root-owned regular file, writable again through a bind mount of itself. */
static void writable_file(const char *p) {
  struct stat st;
  if (lstat(p, &st) != 0) die(p);
  if (!S_ISREG(st.st_mode) || st.st_uid != 0) {
    errno = 0;
    die("--writable-file: not a regular file of root's");
  }
  if (mount(p, p, NULL, MS_BIND, NULL) != 0) die("bind mount of --writable-file");
  if (mount(NULL, p, NULL, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
    die("writable remount of --writable-file");
}

static void drop_root(uid_t uid, gid_t gid, const gid_t *groups, int ngroups, long parent) {
  // The bounding set first: dropping it needs CAP_SETPCAP, which setuid removes.
  for (int cap = 0; cap <= 63; cap++) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) die("PR_CAPBSET_DROP");
  }
  if (setgroups((size_t)ngroups, ngroups ? groups : NULL) != 0) die("setgroups");
  if (setresgid(gid, gid, gid) != 0) die("setresgid");
  if (setresuid(uid, uid, uid) != 0) die("setresuid");
  // setresuid cleared the permitted and effective sets; the inheritable and
  // ambient sets would survive it.
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  if (syscall(SYS_capset, &hdr, data) != 0) die("capset");
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) die("ambient");
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die("PR_SET_NO_NEW_PRIVS");
  // Set after the uid change (which clears it): if the node process dies, its
  // VMs die with it instead of running on unsupervised and unbilled. It
  // survives the exec of QEMU.
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) die("PR_SET_PDEATHSIG");
  if (parent > 0 && getppid() != (pid_t)parent) {
    errno = 0;
    die("the node process is already gone");
  }
  if (getuid() != uid || geteuid() != uid || getgid() != gid || getegid() != gid) {
    errno = 0;
    die("ids did not change");
  }
}

int main(int argc, char **argv) {
  long uid = -1, gid = -1, tap_fd = -1, parent = -1;
  const char *netns = NULL, *tap = NULL, *exec_path = NULL, *writable = NULL;
  gid_t groups[MAX_GROUPS];
  int ngroups = 0;
  const char *cgroups[MAX_CGROUPS];
  int ncgroups = 0, ro = 0, i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) {
      i++;
      break;
    }
    if (strcmp(a, "--readonly-root") == 0) {
      ro = 1;
      continue;
    }
    if (i + 1 >= argc) {
      errno = 0;
      die(a);
    }
    const char *v = argv[++i];
    if (strcmp(a, "--uid") == 0) uid = parse_id(v, "--uid");
    else if (strcmp(a, "--gid") == 0) gid = parse_id(v, "--gid");
    else if (strcmp(a, "--netns") == 0) netns = v;
    else if (strcmp(a, "--parent") == 0) parent = parse_id(v, "--parent");
    else if (strcmp(a, "--tap") == 0) tap = v;
    else if (strcmp(a, "--groups") == 0 && ngroups == 0) ngroups = parse_groups(v, groups);
    else if (strcmp(a, "--exec") == 0 && v[0] == '/') exec_path = v;
    else if (strcmp(a, "--writable-file") == 0 && v[0] == '/') writable = v;
    else if (strcmp(a, "--tap-fd") == 0) tap_fd = parse_id(v, "--tap-fd");
    else if (strcmp(a, "--cgroup-procs") == 0 && ncgroups < MAX_CGROUPS) cgroups[ncgroups++] = v;
    else {
      errno = 0;
      die(a);
    }
  }
  // SECURITY: never run the program as root, and never without an explicit id.
  if (uid <= 0 || gid <= 0 || i >= argc || (tap && tap_fd < 3) || (!tap && tap_fd >= 0) || (writable && !ro)) {
    errno = 0;
    die("usage: fb-launch --uid U --gid G [--groups G1,G2] [--parent PID] [--netns P] [--tap NAME --tap-fd N] "
        "[--cgroup-procs F]... [--readonly-root [--writable-file /PATH]] [--exec /PATH] -- PROGRAM ARGS...");
  }
  for (int c = 0; c < ncgroups; c++) join_cgroup(cgroups[c]);
  if (netns) join_netns(netns);
  if (tap) open_tap(tap, (int)tap_fd);
  if (ro) readonly_root();
  if (writable) writable_file(writable);
  drop_root((uid_t)uid, (gid_t)gid, groups, ngroups, parent);
  if (exec_path) {
    execv(exec_path, &argv[i]);
    die(exec_path);
  }
  execvp(argv[i], &argv[i]);
  die(argv[i]);
  return 126;
}
