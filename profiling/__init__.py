"""Profiling harness for fastcarry (imported as ``fastcarry.profiling``).

Planned: capture TensorBoard/xprof traces of ``fastcarry.unroll`` and parse them
offline (``xprof.convert.raw_to_tool_data``) into per-op tables. Nothing is
implemented here yet; this package only reserves the import path.
"""
