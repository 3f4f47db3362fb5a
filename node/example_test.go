package node_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/p2pkey/p2pkey/node"
)

// A program embeds a node, bootstraps a one-member cluster, and asks for a
// key derived from its node key. A real deployment joins with an invite
// (cfg.Join) instead, and restarts with neither.
func Example() {
	dir, err := os.MkdirTemp("", "p2pkey-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	cfg := node.DefaultConfig(dir)
	cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.MDNS = false // the example stays on loopback
	cfg.Bootstrap = true
	if err := cfg.Validate(); err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := node.Start(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer n.Close()

	key, err := n.Key(ctx, "example/db", true) // waits until escrowed and unlocked
	if err != nil {
		log.Fatal(err)
	}
	lock, _ := n.Lock()
	st := n.Status()
	fmt.Println("lock:", lock)
	fmt.Println("members:", len(st.Members))
	fmt.Println("key bytes:", len(key))
	// Output:
	// lock: unlocked
	// members: 1
	// key bytes: 32
}
