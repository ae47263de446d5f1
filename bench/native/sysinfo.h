// What the bench prints about the machine: CPU model, cache size, per-core maximum frequency.
#pragma once
#include <cstdint>
#include <string>

namespace sparseops::bench {

// "model name" from /proc/cpuinfo (x86), else "Hardware" or the distinct "CPU part" ids (ARM), else "unknown".
std::string cpu_model();
// Size in bytes of the largest data/unified cache of cpu0 from sysfs (0 if unknown).
int64_t largest_cache_bytes();
// Distinct cpuinfo_max_freq values, e.g. "4x1800MHz 4x2400MHz" (empty if unknown).
std::string core_frequencies();

}  // namespace sparseops::bench
