// Package opsweb is the operator's window on a running node: Prometheus
// metrics and a live status page on one http.Handler.
//
// It owns the metric names and their documentation (docs/METRICS.md), the
// status page (HTML, CSS and JavaScript embedded in the binary, no build
// step) and the JSON it polls. It reads the node only through its public
// API (node.Node.Status, Generations, Host) at scrape or poll time, so it
// keeps no state of its own that could drift from the node's.
//
// Entry points: New makes a Server (an http.Handler and an Observer), Start
// opens its listener, Attach gives it the node once the node has started;
// Handler(n) does both for a caller that needs no Observer.
//
// It must not touch key material: nothing it serves carries K, a share or a
// plaintext, only states, counts, peer IDs and generation numbers. Nothing
// imports it except cmd/; counters that need hooks inside the node (fetches
// served and refused, push and unlock latencies) come in through Observer,
// whose method set the node declares as its own interface.
package opsweb
