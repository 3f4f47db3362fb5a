package node_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/p2pkey/p2pkey/node"
)

// A program embeds a node and asks for a key derived from its node key. A
// cluster of one cannot protect K (its only share would be K itself), so no
// key is released until a second node has joined with an invite; restarts
// need neither Bootstrap nor Join.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var dirs []string
	defer func() {
		for _, d := range dirs {
			os.RemoveAll(d)
		}
	}()
	start := func(edit func(*node.Config)) *node.Node {
		dir, err := os.MkdirTemp("", "p2pkey-example")
		if err != nil {
			log.Fatal(err)
		}
		dirs = append(dirs, dir)
		cfg := node.DefaultConfig(dir)
		cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0"}
		cfg.MDNS = false // the example stays on loopback
		edit(&cfg)
		if err := cfg.Validate(); err != nil {
			log.Fatal(err)
		}
		n, err := node.Start(ctx, cfg)
		if err != nil {
			log.Fatal(err)
		}
		return n
	}

	founder := start(func(c *node.Config) { c.Bootstrap = true })
	defer founder.Close()
	_, err := founder.Key(ctx, "example/db", false)
	fmt.Println("alone:", errors.Is(err, node.ErrUnescrowed))

	invite, err := founder.Invite(ctx, time.Hour)
	if err != nil {
		log.Fatal(err)
	}
	second := start(func(c *node.Config) { c.Join = invite.Token })
	defer second.Close()

	key, err := founder.Key(ctx, "example/db", true) // waits until escrowed and unlocked
	if err != nil {
		log.Fatal(err)
	}
	lock, _ := founder.LockState()
	fmt.Println("lock:", lock)
	fmt.Println("members:", len(founder.Status().Members))
	fmt.Println("key bytes:", len(key))
	// Output:
	// alone: true
	// lock: unlocked
	// members: 2
	// key bytes: 32
}
