#!/usr/bin/env bash
# make-rootfs.sh BINARY DIR: lays out the ferromq runtime root file system in DIR.
#
# Shared by both ways of building the image, so they produce the same thing:
#   * deploy/Dockerfile runs it in its build stage and copies DIR into `FROM scratch`;
#   * deploy/image/build-local.sh runs it on this machine (no registry) and feeds DIR
#     to `docker build` as the context.
#
# What goes in (nothing else: no shell, no package manager):
#   /usr/local/bin/ferromq              the broker (also `ferromq ctl`, used by HEALTHCHECK)
#   the shared libraries `ldd` lists, at the paths ldd gives, and the dynamic loader
#   /etc/passwd, /etc/group             root and ferromq (uid/gid 10001), the non-root user
#   /etc/nsswitch.conf                  hosts: files dns (peer DNS names in a cluster)
#   /data                               the data directory, owned by 10001, mode 0700
#   /tmp                                mode 1777
# No CA bundle: the broker makes no outgoing TLS connections of its own (cluster mTLS
# and client-certificate checks use the CA files named in the config).
#
# Ownership: the files are written with numeric owners when run as root; otherwise
# the Dockerfile's COPY --chown / build-local's tar --owner fix them up.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 BINARY DIR" >&2
    exit 2
fi
bin=$1
root=$2
uid=10001

[ -x "$bin" ] || { echo "make-rootfs: $bin is not an executable" >&2; exit 1; }
command -v ldd > /dev/null || { echo "make-rootfs: ldd not found" >&2; exit 1; }

rm -rf "$root"
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/data" "$root/tmp"
install -m 0755 "$bin" "$root/usr/local/bin/ferromq"

# Every library ldd resolves ("name => /path (addr)") plus the loader ("/lib64/ld-... (addr)").
# A "not found" line is an error: the image would not start.
if ldd "$bin" | grep -q 'not found'; then
    echo "make-rootfs: unresolved libraries:" >&2
    ldd "$bin" >&2
    exit 1
fi
libs=$(ldd "$bin" | awk '/=> \//{print $3} /^[[:space:]]*\//{print $1}' | sort -u)

# copy_path P: recreates host path P under $root as it is on the host: every directory
# symlink on the way (Debian's /lib -> usr/lib, /lib64 -> usr/lib64) and every file
# symlink (libfoo.so.1 -> libfoo.so.1.2), down to the real file, which is copied.
copy_dir() {
    local dir=$1 prefix="" part
    local IFS=/
    for part in ${dir#/}; do
        prefix="$prefix/$part"
        if [ -L "$prefix" ]; then
            if [ ! -L "$root$prefix" ]; then
                ln -s "$(readlink "$prefix")" "$root$prefix"
            fi
            copy_dir "$(readlink -f "$prefix")"
        elif [ ! -d "$root$prefix" ]; then
            mkdir -p "$root$prefix"
        fi
    done
}
copy_path() {
    local p=$1 target
    copy_dir "$(dirname "$p")"
    if [ -L "$p" ]; then
        target=$(readlink "$p")
        [ -L "$root$p" ] || [ -e "$root$p" ] || ln -s "$target" "$root$p"
        case "$target" in
            /*) copy_path "$target" ;;
            *) copy_path "$(dirname "$p")/$target" ;;
        esac
    elif [ ! -e "$root$p" ]; then
        cp "$p" "$root$p"
    fi
}
for lib in $libs; do
    copy_path "$lib"
done

cat > "$root/etc/passwd" << PASSWD
root:x:0:0:root:/root:/sbin/nologin
ferromq:x:$uid:$uid:ferromq:/data:/sbin/nologin
PASSWD
cat > "$root/etc/group" << GROUP
root:x:0:
ferromq:x:$uid:
GROUP
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"

chmod 0700 "$root/data"
chmod 1777 "$root/tmp"
if [ "$(id -u)" -eq 0 ]; then
    chown "$uid:$uid" "$root/data"
fi
echo "make-rootfs: $root ($(du -sh "$root" | cut -f1)): ferromq and $(echo "$libs" | wc -w) libraries"
