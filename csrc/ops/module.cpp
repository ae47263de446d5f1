// The extension is loaded with `import sparseops._C`: importing runs the static TORCH_LIBRARY
// registrations. No Python API lives here (ops are reached through torch.ops.sparseops), so the
// module object is empty.
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "sparseops native ops (see torch.ops.sparseops)",
                            -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&def);
}
