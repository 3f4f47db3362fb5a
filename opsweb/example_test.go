package opsweb_test

import (
	"context"
	"log"

	"github.com/p2pkey/p2pkey/node"
	"github.com/p2pkey/p2pkey/opsweb"
)

// The daemon's wiring for `--metrics ADDR`: open the listener before the
// node starts (a port in use fails at once, and the page says the node is
// starting), then attach the node.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	web := opsweb.New()
	if _, err := opsweb.Start(ctx, "127.0.0.1:9464", web); err != nil {
		log.Fatal(err)
	}
	cfg := node.DefaultConfig("/var/lib/p2pkey")
	// Once node has them: cfg.Observer = web; cfg.Metrics = true
	n, err := node.Start(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	web.Attach(n)
	defer n.Close()
	defer web.Attach(nil)
	<-ctx.Done()
}
