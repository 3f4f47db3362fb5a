// Package opsweb is the operator's window on a running node: Prometheus
// metrics and a live status page on one http.Handler.
//
// It owns the metric names and their documentation (docs/METRICS.md), the
// status page (HTML, CSS and JavaScript embedded in the binary, no build
// step) and the JSON it polls. It reads the node only through its public
// API (node.Node.Status, Generations, Lock, Host) at scrape or poll time, so
// it keeps no state of its own that could drift from the node's.
//
// It must not touch key material: nothing it serves carries K, a share or a
// plaintext, only counts, peer IDs and generation numbers. Nothing imports
// it except cmd/; counters that need hooks inside the node (fetches served
// and refused, push and unlock latencies) come in through Observer, which
// the node calls.
package opsweb
