/* Times one onnxruntime model through the C API: the latency an application on the device sees,
 * without the Python binding's per-call cost. Built and driven by benchmarks/ort_capi.py.
 *
 *   ort_capi LIB MODEL IN_NAME IN_SHAPE OUT_NAME OUT_SHAPE INPUT.bin RUNS WARMUP CLOCK
 *
 * SHAPEs are dimensions joined by 'x' (1x1x28x28);
 * LIB: onnxruntime's shared library (the Python wheel's capi/libonnxruntime.so.*), loaded with
 * dlopen; INPUT.bin: the input as raw float32. The session matches edgeslim.profile.ort_session:
 * 1 intra-op and 1 inter-op thread, sequential execution, ORT_ENABLE_ALL. Input and output are
 * bound to caller-owned buffers once; each timed call is one OrtApi::Run.
 * CLOCK: wall (CLOCK_MONOTONIC) or thread (the calling thread's CPU time, as
 * EDGESLIM_LATENCY_CLOCK=thread makes edgeslim.profile time 1-thread inference).
 * Prints the median milliseconds, then the output values (a parity check for the caller).
 *
 * Entries of OrtApi are taken by position, as onnxruntime_c_api.h (API 13) lists them: the struct
 * only grows at its end, so later releases keep these positions; ort_capi.py's output check
 * against Python onnxruntime would catch a wrong one. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef void* Status; /* OrtStatus*: NULL on success */
typedef struct {
  const void* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)(void);
} ApiBase;
typedef void (*Fn)(void);

enum { GET_ERROR_MESSAGE = 2, CREATE_ENV = 3, CREATE_SESSION = 7, RUN = 9, CREATE_SESSION_OPTIONS = 10,
       SET_EXECUTION_MODE = 13, SET_OPTIMIZATION_LEVEL = 23, SET_INTRA_OP_THREADS = 24,
       SET_INTER_OP_THREADS = 25, CREATE_TENSOR_WITH_DATA = 49, CREATE_CPU_MEMORY_INFO = 69 };
enum { API_VERSION = 13, LOG_ERROR = 3, SEQUENTIAL = 0, ENABLE_ALL = 99, ARENA = 1, MEM_CPU = 0, FLOAT = 1 };

static const Fn* api;
#define CALL(index, type) ((type)api[index])

static void check(Status s, const char* what) {
  if (s) {
    fprintf(stderr, "ort_capi: %s: %s\n", what, CALL(GET_ERROR_MESSAGE, const char* (*)(Status))(s));
    exit(3);
  }
}

static int by_value(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static clockid_t clock_id = CLOCK_MONOTONIC;

static double now_ms(void) {
  struct timespec t;
  clock_gettime(clock_id, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

/* "1x1x28x28" -> dims; returns the element count, 0 on a malformed shape */
static size_t parse_shape(const char* text, int64_t* dims, size_t* ndim) {
  size_t count = 1;
  *ndim = 0;
  for (const char* p = text; *ndim < 8;) {
    char* end;
    long long d = strtoll(p, &end, 10);
    if (end == p || d < 1) return 0;
    dims[(*ndim)++] = d;
    count *= (size_t)d;
    if (*end == '\0') return count;
    if (*end != 'x') return 0;
    p = end + 1;
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 11) {
    fprintf(stderr, "usage: ort_capi LIB MODEL IN_NAME IN_SHAPE OUT_NAME OUT_SHAPE INPUT.bin RUNS WARMUP CLOCK\n");
    return 2;
  }
  const char *lib_path = argv[1], *model = argv[2], *in_name = argv[3], *out_name = argv[5];
  int64_t shape[8], out_shape[8];
  size_t ndim, out_ndim;
  size_t in_elems = parse_shape(argv[4], shape, &ndim), out_elems = parse_shape(argv[6], out_shape, &out_ndim);
  int runs = atoi(argv[8]), warmup = atoi(argv[9]);
  int thread_clock = !strcmp(argv[10], "thread");
  if (!in_elems || !out_elems || runs < 1 || warmup < 0 || (!thread_clock && strcmp(argv[10], "wall"))) {
    fprintf(stderr, "ort_capi: bad arguments (shapes like 1x1x28x28 of at most 8 dims >= 1, runs >= 1, "
                    "warmup >= 0, CLOCK wall or thread)\n");
    return 2;
  }
  if (thread_clock) clock_id = CLOCK_THREAD_CPUTIME_ID;
  void* lib = dlopen(lib_path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) { fprintf(stderr, "ort_capi: %s\n", dlerror()); return 2; }
  const ApiBase* (*get_base)(void) = (const ApiBase* (*)(void))dlsym(lib, "OrtGetApiBase");
  if (!get_base) { fprintf(stderr, "ort_capi: %s has no OrtGetApiBase\n", lib_path); return 2; }
  api = (const Fn*)get_base()->GetApi(API_VERSION);
  if (!api) { fprintf(stderr, "ort_capi: onnxruntime %s lacks C API %d\n", get_base()->GetVersionString(), API_VERSION); return 2; }

  float* x = malloc(in_elems * sizeof(float));
  float* y = malloc(out_elems * sizeof(float));
  double* times = malloc((size_t)runs * sizeof(double));
  FILE* f = fopen(argv[7], "rb");
  if (!x || !y || !times || !f || fread(x, sizeof(float), in_elems, f) != in_elems) {
    fprintf(stderr, "ort_capi: cannot read %zu floats from %s\n", in_elems, argv[7]);
    return 2;
  }
  fclose(f);

  void *env, *options, *session, *memory, *input, *output;
  check(CALL(CREATE_ENV, Status (*)(int, const char*, void**))(LOG_ERROR, "edgeslim", &env), "CreateEnv");
  check(CALL(CREATE_SESSION_OPTIONS, Status (*)(void**))(&options), "CreateSessionOptions");
  check(CALL(SET_INTRA_OP_THREADS, Status (*)(void*, int))(options, 1), "SetIntraOpNumThreads");
  check(CALL(SET_INTER_OP_THREADS, Status (*)(void*, int))(options, 1), "SetInterOpNumThreads");
  check(CALL(SET_EXECUTION_MODE, Status (*)(void*, int))(options, SEQUENTIAL), "SetSessionExecutionMode");
  check(CALL(SET_OPTIMIZATION_LEVEL, Status (*)(void*, int))(options, ENABLE_ALL), "SetSessionGraphOptimizationLevel");
  check(CALL(CREATE_SESSION, Status (*)(void*, const char*, void*, void**))(env, model, options, &session), "CreateSession");
  check(CALL(CREATE_CPU_MEMORY_INFO, Status (*)(int, int, void**))(ARENA, MEM_CPU, &memory), "CreateCpuMemoryInfo");
  typedef Status (*CreateTensor)(void*, void*, size_t, const int64_t*, size_t, int, void**);
  check(CALL(CREATE_TENSOR_WITH_DATA, CreateTensor)(memory, x, in_elems * sizeof(float), shape, ndim, FLOAT, &input), "CreateTensorWithDataAsOrtValue (input)");
  check(CALL(CREATE_TENSOR_WITH_DATA, CreateTensor)(memory, y, out_elems * sizeof(float), out_shape, out_ndim, FLOAT, &output), "CreateTensorWithDataAsOrtValue (output)");

  typedef Status (*Run)(void*, void*, const char* const*, const void* const*, size_t, const char* const*, size_t, void**);
  Run run = CALL(RUN, Run);
  const char* in_names[1] = {in_name};
  const char* out_names[1] = {out_name};
  const void* inputs[1] = {input};
  for (int i = 0; i < warmup; i++) check(run(session, NULL, in_names, inputs, 1, out_names, 1, &output), "Run");
  for (int i = 0; i < runs; i++) {
    double start = now_ms();
    check(run(session, NULL, in_names, inputs, 1, out_names, 1, &output), "Run");
    times[i] = now_ms() - start;
  }
  qsort(times, (size_t)runs, sizeof(double), by_value);
  printf("%.9f\n", runs % 2 ? times[runs / 2] : 0.5 * (times[runs / 2 - 1] + times[runs / 2]));
  for (size_t i = 0; i < out_elems; i++) printf("%.9g\n", y[i]);
  return 0;
}
