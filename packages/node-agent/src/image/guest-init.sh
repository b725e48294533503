#!/bin/busybox sh
# Firebreak initramfs /init. Runs as PID 1 before the root filesystem exists:
# loads the virtio modules, mounts the sandbox disk, configures the fixed
# guest-side network, then hands PID 1 to tini, which runs the guest agent.
# Kernel command line keys: fb.probe=1 (accelerator probe: print a marker and
# power off), fb.net=0 (no network).
B=/bin/busybox
$B mount -t devtmpfs dev /dev
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
cmdline="$($B cat /proc/cmdline)"
case " $cmdline " in
  *" fb.probe=1 "*)
    echo "FIREBREAK_PROBE_OK"
    $B poweroff -f
    ;;
esac
for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net virtio_console virtio-rng virtio_balloon; do
  $B insmod /lib/modules/$m.ko || echo "init: insmod $m failed"
done
# Device probes can finish after insmod returns: wait (up to ~5 s) for the
# disk and the control port before using them.
i=0
while [ $i -lt 500 ] && { [ ! -b /dev/vda ] || ! $B ls /sys/class/virtio-ports/*/name >/dev/null 2>&1; }; do
  $B usleep 10000
  i=$((i + 1))
done
if ! $B mount -t ext4 -o rw,noatime /dev/vda /newroot; then
  echo "FIREBREAK_INIT_ERROR: cannot mount the root disk /dev/vda"
  $B poweroff -f
fi
# Host-guest control channel: name the virtio-serial ports like udev would.
$B mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/*; do
  [ -e "$p/name" ] && $B ln -sf "../${p##*/}" "/dev/virtio-ports/$($B cat "$p/name")"
done
# Same addresses in every sandbox; the host reaches it through its namespace.
$B ip link set lo up
case " $cmdline " in
  *" fb.net=0 "*) ;;
  *)
    if [ -e /sys/class/net/eth0 ]; then
      $B ip addr add 169.254.0.21/30 dev eth0
      $B ip link set eth0 up
      $B ip route add default via 169.254.0.22 dev eth0
    fi
    ;;
esac
$B mount --move /dev /newroot/dev
$B mount --move /proc /newroot/proc
$B mount --move /sys /newroot/sys
$B mkdir -p /newroot/dev/pts /newroot/dev/shm
$B mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /newroot/dev/pts
$B mount -t tmpfs -o mode=1777,nosuid,nodev shm /newroot/dev/shm
$B mount -t tmpfs -o mode=755,nosuid,nodev run /newroot/run
$B mount -t tmpfs -o mode=1777,nosuid,nodev tmp /newroot/tmp
$B mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup 2>/dev/null
$B hostname sandbox
exec $B switch_root /newroot /sbin/firebreak-init
