// The Python extension module kdops._C. Importing it runs the static TORCH_LIBRARY
// registrations in every other translation unit; the module itself exports nothing but
// a description of what was compiled in.
#include <Python.h>

namespace {

PyObject* built_with_cuda(PyObject*, PyObject*) {
#ifdef KDOPS_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef methods[] = {
    {"built_with_cuda", built_with_cuda, METH_NOARGS, "True when the CUDA kernels were compiled in."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "kdops native kernels (ops live in torch.ops.kdops)", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
