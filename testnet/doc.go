// Package testnet holds the end-to-end tests of the testnet script
// (testnet/testnet): they build the real p2pkey binary, start real daemons on
// loopback, and drive them through the CLI, exactly as an operator would.
package testnet
