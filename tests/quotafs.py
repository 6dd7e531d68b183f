"""A local filesystem with a byte quota, for "the staging disk is full" tests: once the files under its root
hold more than `quota` bytes, writes fail with ENOSPC, as a full disk's would. Stateless (the usage is read
from the disk), so the driver and every Ray worker see the same full disk."""

from __future__ import annotations

import errno
import io
import os

import pyarrow as pa
import pyarrow.fs as pafs


def usage(root: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


class _Sink(io.RawIOBase):
    def __init__(self, path: str, root: str, quota: int) -> None:
        self._f = open(path, "wb")
        self._root, self._quota = root, quota

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if usage(self._root) + len(b) > self._quota:
            raise OSError(errno.ENOSPC, "No space left on device (quota of the test's staging disk)")
        n = self._f.write(b)
        self._f.flush()
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


class QuotaHandler(pafs.FileSystemHandler):
    def __init__(self, root: str, quota: int) -> None:
        self.root, self.quota = root, quota
        self._fs = pafs.LocalFileSystem()

    def __reduce__(self):
        return QuotaHandler, (self.root, self.quota)

    def __eq__(self, other):
        return isinstance(other, QuotaHandler) and (self.root, self.quota) == (other.root, other.quota)

    def __ne__(self, other):
        return not self == other

    def get_type_name(self):
        return "quota"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self._fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self._fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self._fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self._fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("refused")

    def delete_file(self, path):
        self._fs.delete_file(path)

    def move(self, src, dest):
        self._fs.move(src, dest)

    def copy_file(self, src, dest):
        self.open_output_stream(dest, None).write(self._fs.open_input_stream(src).read())

    def open_input_stream(self, path):
        return self._fs.open_input_stream(path)

    def open_input_file(self, path):
        return self._fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return pa.PythonFile(_Sink(path, self.root, self.quota), mode="w")

    def open_append_stream(self, path, metadata):
        raise OSError("not supported")


def quota_fs(root: str, quota: int) -> pafs.PyFileSystem:
    return pafs.PyFileSystem(QuotaHandler(root, quota))
