// Command rafttcp is one server of a plain hashicorp/raft cluster over TCP:
// raft.DefaultConfig(), raft.NewTCPTransport, in-memory log, stable and
// snapshot stores, and an FSM that does nothing. It is the baseline that
// package idle measures p2pkey daemons against: what Raft itself costs an
// idle cluster of the same size on the same machine.
//
//	rafttcp -id n1 -peers n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003
//
// Every server bootstraps the same static configuration, so the cluster
// forms without any join step. The server listens on its own entry of
// -peers. It reports on standard output, one line each, its state ("state
// Follower") and the leader it knows ("leader n2") at start and whenever
// they change, and runs until SIGTERM or SIGINT. Raft logs at error level
// only, to standard error.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "rafttcp:", err)
		os.Exit(1)
	}
}

func run() error {
	id := flag.String("id", "", "this server's ID, one of the IDs in -peers")
	peers := flag.String("peers", "", "the cluster: comma-separated ID=host:port")
	flag.Parse()
	servers, self, err := parsePeers(*peers, *id)
	if err != nil {
		return err
	}

	logger := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Error, Output: os.Stderr})
	trans, err := raft.NewTCPTransportWithLogger(string(self.Address), nil, 3, 10*time.Second, logger)
	if err != nil {
		return err
	}
	rc := raft.DefaultConfig()
	rc.LocalID = self.ID
	rc.Logger = logger
	store := raft.NewInmemStore()
	r, err := raft.NewRaft(rc, nopFSM{}, store, store, raft.NewInmemSnapshotStore(), trans)
	if err != nil {
		return err
	}
	if err := r.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}

	// Report state and leader changes as they happen; nothing here polls.
	obs := make(chan raft.Observation, 16)
	r.RegisterObserver(raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.RaftState, raft.LeaderObservation:
			return true
		}
		return false
	}))
	fmt.Printf("state %s\n", r.State())
	if _, lid := r.LeaderWithID(); lid != "" {
		fmt.Printf("leader %s\n", lid)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	for {
		select {
		case o := <-obs:
			switch d := o.Data.(type) {
			case raft.RaftState:
				fmt.Printf("state %s\n", d)
			case raft.LeaderObservation:
				fmt.Printf("leader %s\n", d.LeaderID)
			}
		case <-sig:
			return r.Shutdown().Error()
		}
	}
}

// parsePeers reads "id=host:port,..." and finds self in it.
func parsePeers(s, id string) ([]raft.Server, raft.Server, error) {
	var servers []raft.Server
	var self raft.Server
	for _, p := range strings.Split(s, ",") {
		name, addr, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || name == "" || addr == "" {
			return nil, self, fmt.Errorf("-peers: %q is not ID=host:port", p)
		}
		srv := raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(name), Address: raft.ServerAddress(addr)}
		servers = append(servers, srv)
		if name == id {
			self = srv
		}
	}
	if self.ID == "" {
		return nil, self, errors.New("-id must name one of the servers in -peers")
	}
	return servers, self, nil
}

// nopFSM applies nothing and snapshots nothing.
type nopFSM struct{}

func (nopFSM) Apply(*raft.Log) any                    { return nil }
func (nopFSM) Snapshot() (raft.FSMSnapshot, error)    { return nopSnapshot{}, nil }
func (nopFSM) Restore(rc io.ReadCloser) error         { return rc.Close() }
func (nopSnapshot) Persist(s raft.SnapshotSink) error { return s.Close() }
func (nopSnapshot) Release()                          {}

type nopSnapshot struct{}
