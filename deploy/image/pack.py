#!/usr/bin/env python3
"""pack.py ROOTFS OUT.tar REF VERSION: one-layer `docker save` archive of ROOTFS.

The layout `ctr images import`, `kind load image-archive` and `docker load`
read: manifest.json, the image config <sha256>.json, <sha256>/layer.tar.
Reproducible: entries sorted, owner root, times SOURCE_DATE_EPOCH (default
0), so the same files give the same digests.
"""
import hashlib
import io
import json
import os
import stat
import sys
import tarfile

EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def tar_info(root, rel):
    path = os.path.join(root, rel)
    st = os.lstat(path)
    ti = tarfile.TarInfo(rel)
    ti.mtime = EPOCH
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    ti.mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        ti.type = tarfile.SYMTYPE
        ti.linkname = os.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        ti.type = tarfile.DIRTYPE
    elif stat.S_ISREG(st.st_mode):
        ti.size = st.st_size
    else:
        sys.exit(f"pack.py: {path}: only files, directories and symlinks belong in the image")
    return ti, path


def layer(root):
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames + sorted(filenames):
            entries.append(os.path.relpath(os.path.join(dirpath, name), root))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for rel in sorted(entries):
            ti, path = tar_info(root, rel)
            if ti.isreg():
                with open(path, "rb") as f:
                    t.addfile(ti, f)
            else:
                t.addfile(ti)
    return buf.getvalue()


def config(diff_id, version):
    created = "1970-01-01T00:00:00Z" if EPOCH == 0 else \
        __import__("datetime").datetime.utcfromtimestamp(EPOCH).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/usr/bin/overlayd"],
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.title": "felt",
                "org.opencontainers.image.description": "felt: Kubernetes pod networking (overlayd + the felt CNI plugin)",
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.licenses": "Apache-2.0",
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "deploy/image/build.sh"}],
    }


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    root, out, ref, version = sys.argv[1:]
    lb = layer(root)
    layer_hex = hashlib.sha256(lb).hexdigest()
    cfg = json.dumps(config("sha256:" + layer_hex, version), sort_keys=True, separators=(",", ":")).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    manifest = [{"Config": cfg_name, "RepoTags": [ref], "Layers": [layer_hex + "/layer.tar"]}]
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as t:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, EPOCH
            t.addfile(ti, io.BytesIO(data))
        d = tarfile.TarInfo(layer_hex)
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, EPOCH
        t.addfile(d)
        add(layer_hex + "/VERSION", b"1.0")
        add(layer_hex + "/layer.tar", lb)
        add(cfg_name, cfg)
        add("manifest.json", json.dumps(manifest).encode())
    os.replace(tmp, out)
    print(f"{ref} config sha256:{cfg_name[:-5]} layer sha256:{layer_hex} ({len(lb)} bytes)")


main()
