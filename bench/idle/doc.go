// Package idle measures what an idle p2pkey cluster costs, on real processes
// (issue 13). It holds no library code: its benchmark builds the p2pkey
// binary and the rafttcp baseline (bench/idle/rafttcp), starts a cluster of
// daemons and, beside it in the same run, a plain hashicorp/raft cluster of
// the same size over TCP with raft.DefaultConfig() and an FSM that does
// nothing, lets both settle, and then watches every process over one window:
//
//   - CPU: utime+stime from /proc/PID/stat, as a percentage of one core,
//     per daemon and for the whole cluster;
//   - memory: VmRSS from /proc/PID/status at the end of the window (the
//     largest daemon's and the median daemon's), and RssAnon, the part that
//     is not pages of mapped files: VmRSS counts the executable's pages
//     (about 24 MB for p2pkey) in every daemon, though one machine holds
//     them once for all the daemons it runs;
//   - traffic: the tcp_info counters (bytes_sent, bytes_received, segs_out,
//     segs_in) of every TCP socket the process holds, read with `ss -tinp`
//     at the start, every few seconds and at the end. "wire" adds 66 bytes
//     per segment (Ethernet, IPv4 and TCP headers with timestamps) to the
//     payload, as a LAN would carry it. Daemons listen on TCP only, so that
//     every byte they exchange is on a counted socket.
//
// Traffic is reported for the busiest node (in and out: the leader) and as
// the cluster's average per node (every byte counted once, at its sender).
//
// Leader and followers are reported apart: a daemon's role comes from
// `p2pkey status --json` before and after the window, the baseline's from the
// state lines rafttcp prints. A window in which either cluster changed leader
// or term is discarded, said so, and measured again (at most -idle.windows
// times; then the benchmark fails).
//
// For 5 nodes it says whether issue 13's targets are met (leader, each
// follower, leader against the baseline, bytes per node); for 25 nodes,
// the cluster's total, the leader and RSS per daemon. Per-process CPU time
// barely depends on what else the machine runs, but a loaded machine delays
// timers and shares caches: report the load beside the figures.
//
// Run it (about two minutes for 5 nodes, five for 25; skipped with -short):
//
//	go test ./bench/idle -run '^$' -bench Idle -benchtime 1x
//	go test ./bench/idle -run '^$' -bench Idle -benchtime 1x -args -idle.nodes 5,15 -idle.window 20s
//	go test ./bench/idle -run '^$' -bench Idle -benchtime 1x -timeout 30m -args -idle.nodes 25 -idle.windows 3 -idle.window 40s
//
// Flags (after -args), each with an environment variable as its default:
//
//	-idle.nodes   IDLE_NODES    cluster sizes, comma-separated (5)
//	-idle.window  IDLE_WINDOW   the measured window (60s)
//	-idle.settle  IDLE_SETTLE   how long a formed cluster idles before it (15s)
//	-idle.windows IDLE_WINDOWS  how many windows to measure; medians are reported (1)
//	-idle.bin     IDLE_BIN      a p2pkey binary to measure instead of building ./cmd/p2pkey
//	-idle.args    IDLE_ARGS     extra `p2pkey daemon` flags, space-separated
//
// -idle.bin compares builds in one command: build the old tree's binary
// elsewhere and point the benchmark at it; the baseline runs beside it as
// always.
package idle
