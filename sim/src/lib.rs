//! Load generators and simulators for EdgeDesk benchmarks (see docs/BENCHMARKS.md).
