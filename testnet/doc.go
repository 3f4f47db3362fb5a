// Package testnet holds the end-to-end tests of the testnet script
// (testnet/testnet): they build the real p2pkey binary, start real daemons on
// loopback, and drive them through the CLI, exactly as an operator would.
//
// Besides the script's own tests it holds the fault suite of issue 12
// ("escrowed must mean recoverable under every fault"):
//
//   - TestChaos: seeded faults against a 5-node testnet (kill -9 of a
//     follower, the leader or the joiner at a moment of a join; SIGSTOP of a
//     follower or the leader during a join; cold and rolling restarts; a
//     holder's lost disk and the audit that finds it; churn of joins and
//     removals by vote with kills in between; a restart while a generation
//     is open, then a holder loss). After each fault a verifier
//     (verify_test.go) waits, bounded, for recovery and checks: every member
//     unlocked with byte-identical derived keys, one leader, one current
//     generation and none open, removed nodes locked, and the escrow
//     invariant (escrow_test.go): the envelopes the recorded holders really
//     keep, opened with the owner's identity key, include one split of at
//     least max(threshold, shares held) envelopes any threshold of which give
//     the owner's key back. Flags: -chaos.seed=N (default random, always
//     printed), -chaos.long (10 seeds, every scenario twice), -chaos.runs=N,
//     -chaos.bound=D, -chaos.only=WORDS, -chaos.maxfail=N. A failing run
//     keeps the daemons' logs.
//   - TestIssue12*: the three sequences, one test each.
//   - TestQuietLogs: issue 16's acceptance 3, a 5-node testnet through up,
//     a join, a kill -9 of a follower, its restart and down, with
//     GOLOG_LOG_FMT=json; it lists every ERROR, WARN and non-go-log line of
//     the daemons' logs, and fails on them with -logs.strict.
//
// The harness (cluster_test.go) starts and signals the daemons itself, with
// the script's data layout and pid files, so that faults land at a chosen
// moment; the script brings the first nodes up. The tests build the p2pkey
// binary once per run and give it to the script (TESTNET_BIN), so a long run
// tests one build from start to end.
//
// Every test here is skipped under -short.
package testnet
