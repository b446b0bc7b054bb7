"""Loads lab.thrift into the `lab_thrift` module that server and client share."""

from pathlib import Path

import thriftpy2

IDL_PATH = Path(__file__).with_name("lab.thrift")

# Parsed once at import so a pre-imported zygote's forked children share it; the
# result is plain classes and data (no threads, sockets or locks), so forking is safe.
lab_thrift = thriftpy2.load(str(IDL_PATH), module_name="lab_thrift")
LabService = lab_thrift.LabService
PodInfo = lab_thrift.PodInfo
