// Machine description from /proc/cpuinfo and /sys (Linux and Android; empty elsewhere).
#include "sysinfo.h"

#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace sparseops::bench {
namespace {

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

std::string read_line(const std::string& path) {
  std::ifstream f(path);
  std::string s;
  std::getline(f, s);
  return trim(s);
}

}  // namespace

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line, model, hardware;
  std::set<std::string> parts;
  while (std::getline(f, line)) {
    const size_t c = line.find(':');
    if (c == std::string::npos) continue;
    const std::string key = trim(line.substr(0, c)), val = trim(line.substr(c + 1));
    if (key == "model name" && model.empty()) model = val;
    else if (key == "Hardware") hardware = val;
    else if (key == "CPU part") parts.insert(val);
  }
  if (!model.empty()) return model;
  if (!hardware.empty()) return hardware;
  if (!parts.empty()) {
    std::string s = "ARM CPU part";
    for (const auto& p : parts) s += " " + p;
    return s;
  }
  return "unknown";
}

int64_t largest_cache_bytes() {
  int64_t best = 0;
  for (int i = 0; i < 8; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    const std::string type = read_line(dir + "type"), size = read_line(dir + "size");
    if (size.empty() || type == "Instruction") continue;
    int64_t v = std::atoll(size.c_str());
    if (size.back() == 'K') v <<= 10;
    else if (size.back() == 'M') v <<= 20;
    if (v > best) best = v;
  }
  return best;
}

std::string core_frequencies() {
  std::map<int64_t, int> count;
  for (int c = 0; c < 1024; ++c) {
    const std::string s = read_line("/sys/devices/system/cpu/cpu" + std::to_string(c) + "/cpufreq/cpuinfo_max_freq");
    if (s.empty()) {
      if (c > 0 && read_line("/sys/devices/system/cpu/cpu" + std::to_string(c) + "/online").empty()) break;
      continue;
    }
    ++count[std::atoll(s.c_str()) / 1000];
  }
  std::ostringstream o;
  for (const auto& kv : count) o << (o.tellp() > 0 ? " " : "") << kv.second << "x" << kv.first << "MHz";
  return o.str();
}

}  // namespace sparseops::bench
