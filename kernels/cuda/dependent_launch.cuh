// Programmatic dependent launch (Hopper): a kernel launched with LaunchDependent may start
// while the kernel before it in the stream is still running, once every CTA of that kernel
// has run AllowDependents() (or exited). Until it calls WaitForPredecessor() it must neither
// read what earlier kernels write nor write anything they may read; after the wait, everything
// before it in the stream is complete and visible. The decode GEMVs use the time before the
// wait to start their weight rows' trip from DRAM (row_pipeline.cuh), which otherwise began
// only after the previous kernel had drained: ~150 GEMVs of 5-9 us per decode step (ncu,
// docs/benchmarks.md). Works inside recorded CUDA graphs. LATENTSERVE_CUDA_PDL=0 launches
// normally (the before/after of one binary).
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <utility>

namespace latentserve::kernels::cuda {

// Lets the next kernel in the stream, if launched dependent, start its independent prologue.
__device__ __forceinline__ void AllowDependents() { asm volatile("griddepcontrol.launch_dependents;\n" ::); }

// Waits until the kernels before this one in the stream are complete and their writes visible
// (a no-op for a kernel launched normally).
__device__ __forceinline__ void WaitForPredecessor() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }

inline bool DependentLaunchEnabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("LATENTSERVE_CUDA_PDL");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return enabled;
}

// kernel<<<grid, block, smem, stream>>>(args...), allowed to overlap its predecessor.
template <typename... Params, typename... Args>
cudaError_t LaunchDependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                            Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = DependentLaunchEnabled() ? 1 : 0;
  config.attrs = attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace latentserve::kernels::cuda
