// cpu_expert_worker: one process per NUMA node computing routed experts
// (cpu_expert_worker/expert_shard.h). Started by the coordinator
// (`moeflow launch`), which drives it over gRPC (proto/worker.proto) and UCX.
#include "dataflow/worker_process.h"
#include "cpu_expert_worker/expert_shard.h"

int main(int argc, char** argv) {
  moeflow::ExpertShard shard;
  return moeflow::dataflow::RunWorkerProcess(argc, argv, "cpu_expert_worker", shard);
}
