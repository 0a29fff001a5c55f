// Tunables of moeflow's UCX data plane, each declared once (name, unit,
// default, one-line doc). The topology file's TransportSpec and the CLI flags
// fill these structs; nothing else reads UCX_* environment variables for them.
//
// Values here override the UCX_* environment (they are applied with
// ucp_config_modify after ucp_config_read), so a stray UCX_TLS in a user's
// shell can't silently change the transport.
#ifndef MOEFLOW_TRANSPORT_TRANSPORT_CONFIG_H_
#define MOEFLOW_TRANSPORT_TRANSPORT_CONFIG_H_

#include <cstdint>
#include <string>

namespace moeflow::transport {

// Per-process UCX context settings (UcxContext::Create).
struct TransportConfig {
  // UCX transports, UCX_TLS syntax: "sm,self" (shared memory, one box) or
  // "tcp" (across boxes). Empty: "sm,self".
  std::string tls = "sm,self";
  // Network devices for tcp, UCX_NET_DEVICES syntax ("lo", "eth0"); empty:
  // UCX's default (every device).
  std::string net_devices;
  // Interval between UCX keepalive rounds; bounds how long a dead peer that
  // closes no socket (shared memory) goes unnoticed.
  int keepalive_interval_ms = 200;
  // Messages up to this size go eagerly (UCX_RNDV_THRESH): the send completes
  // without the receiver's progress. Above it UCX uses rendezvous, whose
  // handshake needs the receiver to progress — and a receiver that is
  // computing (the coordinator during the shared experts) or asleep on its
  // event fd adds a wake-up per step. 1 MiB covers a decode step's messages
  // (an expert reply is pairs × hidden × 4 bytes: 48 KiB for V2-Lite, 224 KiB
  // for V3); 0: UCX's own choice.
  int64_t rndv_threshold_bytes = int64_t{1} << 20;
};

// Per-peer channel settings (ActivationChannel::Create).
struct ActivationChannelOptions {
  // Size of the registered buffer that outgoing activations are staged in.
  int64_t send_buffer_bytes = 0;
  // Size of the registered buffer that incoming activations land in.
  int64_t recv_buffer_bytes = 0;
  // Transfers (sends + receives) that may be posted and not yet released.
  int max_in_flight = 16;
  // Wait() polls UCX for this long before sleeping on the worker's event fd;
  // short, because cores are shared with compute threads.
  int spin_before_sleep_us = 20;
  // Then, for up to this long, Wait() polls between sched_yield() calls
  // before it sleeps: the core runs any other runnable thread (the peer
  // process computing on it) and returns to the poll when there is none,
  // instead of halting and waking through the event fd. 0: no yield phase.
  int yield_before_sleep_us = 0;
  // Longest single sleep inside Wait(); each wake-up runs UCX progress, which
  // is where keepalive notices a dead shared-memory peer.
  int liveness_poll_ms = 50;
};

}  // namespace moeflow::transport

#endif  // MOEFLOW_TRANSPORT_TRANSPORT_CONFIG_H_
