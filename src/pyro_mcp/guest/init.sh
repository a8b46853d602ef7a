#!/bin/busybox sh
# pyro guest init: the /init of the busybox initramfs.
#
# There is no udev and no systemd. This script loads the virtio drivers (they
# are modules in the distribution's cloud kernel, and microvm describes its
# virtio-mmio devices through ACPI, so virtio_mmio must be loaded before the
# device drivers), mounts the root filesystem and the runtime filesystems under
# it, configures the network when asked, copies the agent to /run/pyro and
# hands PID 1 to the agent with switch_root.
#
# Kernel command line:
#   pyro.net=1            bring up eth0 for QEMU user-mode networking
#   pyro.hostname=NAME    the guest's hostname until the host's hello names another
#   pyro.runtime=1        an image environment: the agent runs from the runtime
#                         drive (serial pyro-runtime), with its own loader and
#                         libraries, mounted read-only at /run/pyro/runtime
#
# /workspace and the baseline are mounted by the agent when the host's hello
# asks for them, not here: a warm snapshot is taken before any workspace disk
# is mounted, and cold boots take the same path so both are tested alike.

/bin/busybox --install -s /bin
export PATH=/bin

fail() {
    echo "pyro-init: $*" >&2
    # panic=-1 on the command line turns this into an immediate QEMU exit.
    echo c > /proc/sysrq-trigger
    exit 1
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

net=0
runtime=0
name=pyro
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        pyro.net=1) net=1 ;;
        pyro.hostname=*) name="${arg#pyro.hostname=}" ;;
        pyro.runtime=1) runtime=1 ;;
    esac
done

for module in virtio_ring virtio virtio_mmio virtio_blk virtio_console; do
    insmod "/lib/modules/$module.ko" || fail "cannot load $module"
done
# Free page reporting (a cold-booted guest's balloon device; absent in older builds).
if [ -f /lib/modules/virtio_balloon.ko ]; then
    insmod /lib/modules/virtio_balloon.ko || fail "cannot load virtio_balloon"
fi
if [ "$net" = 1 ]; then
    for module in failover net_failover virtio_net; do
        insmod "/lib/modules/$module.ko" || fail "cannot load $module"
    done
fi

tries=0
while [ ! -b /dev/vda ]; do
    tries=$((tries + 1))
    [ "$tries" -gt 2000 ] && fail "no root disk /dev/vda"
    usleep 5000
done

mkdir -p /newroot
mount -t ext4 -o rw,noatime /dev/vda /newroot || fail "cannot mount /dev/vda"
# An image may lack any of these; they are made in the VM's own root overlay.
mkdir -p /newroot/etc /newroot/run /newroot/tmp /newroot/dev /newroot/proc /newroot/sys

hostname "$name"
ip link set lo up
if [ "$net" = 1 ]; then
    tries=0
    while [ ! -e /sys/class/net/eth0 ]; do
        tries=$((tries + 1))
        [ "$tries" -gt 2000 ] && fail "no network device eth0"
        usleep 5000
    done
    ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
    echo "nameserver 10.0.2.3" > /newroot/etc/resolv.conf
fi

mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run
mkdir -p /newroot/run/pyro /newroot/tmp /newroot/dev
# The name and machine id live on tmpfs: the host's hello sets new ones after
# every boot and every warm restore, and a write to the root disk there would
# cost a synchronous flush (ext4 flushes a file renamed over another).
echo "$name" > /newroot/run/pyro/hostname
tr -d - < /proc/sys/kernel/random/uuid > /newroot/run/pyro/machine-id
for file in hostname machine-id; do
    if [ ! -L "/newroot/etc/$file" ]; then
        rm -f "/newroot/etc/$file"
        ln -s "/run/pyro/$file" "/newroot/etc/$file"
    fi
done
cp /pyro/*.py /newroot/run/pyro/  # the agent and its modules: guest_files()
if [ "$runtime" = 1 ]; then
    device=
    tries=0
    while [ -z "$device" ]; do
        for block in /sys/block/vd*; do
            [ "$(cat "$block/serial" 2>/dev/null)" = pyro-runtime ] && device="/dev/${block##*/}"
        done
        tries=$((tries + 1))
        [ -z "$device" ] && [ "$tries" -gt 2000 ] && fail "no runtime drive"
        [ -z "$device" ] && usleep 5000
    done
    mkdir -p /newroot/run/pyro/runtime
    mount -t ext4 -o ro,noload "$device" /newroot/run/pyro/runtime || fail "cannot mount $device"
fi
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/tmp

umount /proc
umount /sys
mount --move /dev /newroot/dev
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/dev/shm

export PYRO_GUEST=1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [ "$runtime" = 1 ]; then
    rt=/run/pyro/runtime
    exec switch_root /newroot "$rt/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
        --library-path "$rt/lib/x86_64-linux-gnu:$rt/usr/lib/x86_64-linux-gnu" \
        "$rt/usr/bin/python3.11" -E -s -u /run/pyro/agent.py
fi
exec switch_root /newroot /usr/bin/python3 -u /run/pyro/agent.py
