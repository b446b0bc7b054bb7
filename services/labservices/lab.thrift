// LabService: the sample Thrift service every pod in the lab runs.
// Binary protocol, buffered transport, plain TCP (as the incident's services).

namespace py lab_thrift

// Who answered, and the peer address this server saw on the connection:
// client_ip/client_port tell whether kube-proxy SNATed the connection
// (a node IP instead of the real client's IP).
// `service` is a Thrift keyword, hence service_name.
struct PodInfo {
  1: string service_name,
  2: string pod,
  3: string node,
  4: string az,
  5: string pod_ip,
  6: string client_ip,
  7: i32 client_port,
}

service LabService {
  // Cheapest round trip: what a pooled client sends to keep a connection warm.
  void ping(),

  // Returns the payload unchanged (byte-exact, any size including empty).
  binary echo(1: binary payload),

  // Sleeps `milliseconds` on the server, returns it: a slow backend call.
  i32 work(1: i32 milliseconds),

  PodInfo whoami(),
}
