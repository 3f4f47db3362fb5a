package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/p2pkey/p2pkey/node"
	"github.com/spf13/cobra"
)

type globals struct {
	dataDir string
	jsonOut bool
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "p2pkey",
		Short: "Keep each machine's key alive on its cluster, never on its own disk",
		Long: `p2pkey runs a peer-to-peer node that holds its cluster's key shares.

Every node has a 32-byte key (K) that protects its own data. The node splits K
with Shamir's Secret Sharing and hands sealed shares to its peers; a Raft log
replicated over libp2p records who holds what. A restarted node is locked until
it has fetched a threshold of its shares back from its peers.

The data directory comes from --data, otherwise $P2PKEY_DATA, otherwise
~/.p2pkey. Commands other than init and daemon talk to the running daemon over
the unix socket DATA/p2pkey.sock.

Exit status: 0 success, 1 error, 2 usage error, 3 the node is locked.`,
		Example: `  p2pkey init
  p2pkey daemon --bootstrap              # first node of a new cluster
  p2pkey invite --ttl 30m > invite.txt   # on a member: print an invite
  p2pkey daemon --join-file invite.txt   # on the new machine
  p2pkey status`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.dataDir, "data", "", "data directory (default $P2PKEY_DATA, else ~/.p2pkey)")
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		if g.dataDir == "" {
			g.dataDir = os.Getenv("P2PKEY_DATA")
		}
		if g.dataDir == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return fmt.Errorf("cannot find a home directory; pass --data: %w", err)
			}
			g.dataDir = filepath.Join(home, ".p2pkey")
		}
		abs, err := filepath.Abs(g.dataDir)
		if err != nil {
			return err
		}
		g.dataDir = abs
		return nil
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &statusError{code: exitUsage, err: fmt.Errorf("%w\nRun '%s --help' for usage", err, cmd.CommandPath())}
	})
	root.AddCommand(
		newInitCmd(g),
		newDaemonCmd(g),
		newInviteCmd(g),
		newStatusCmd(g),
		newMembersCmd(g),
		newRemoveCmd(g),
		newReinstateCmd(g),
		newLeaveCmd(g),
		newWaitCmd(g),
		newKeyCmd(g),
		newEncryptCmd(g),
		newDecryptCmd(g),
		newGenerationsCmd(g),
		newAuditCmd(g),
	)
	return root
}

func usageArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return &statusError{code: exitUsage, err: fmt.Errorf("%s takes %d argument(s), got %d\nRun '%s --help' for usage", cmd.CommandPath(), n, len(args), cmd.CommandPath())}
		}
		return nil
	}
}

func (g *globals) client() *node.Client { return node.NewClient(g.dataDir) }

func reqCtx(cmd *cobra.Command, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(cmd.Context(), d)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// fileConfig is DATA/config.json, written by init.
type fileConfig struct {
	Version    int      `json:"version"`
	Listen     []string `json:"listen"`
	Announce   []string `json:"announce,omitempty"`
	Relays     []string `json:"relays,omitempty"`
	NATPortMap bool     `json:"nat_portmap,omitempty"`
}

func configPath(dataDir string) string { return filepath.Join(dataDir, "config.json") }

func readFileConfig(dataDir string) (fileConfig, error) {
	var fc fileConfig
	data, err := os.ReadFile(configPath(dataDir))
	if errors.Is(err, os.ErrNotExist) {
		return fc, fmt.Errorf("%s is not initialised: run 'p2pkey init --data %s' first", dataDir, dataDir)
	}
	if err != nil {
		return fc, err
	}
	if err := json.Unmarshal(data, &fc); err != nil {
		return fc, fmt.Errorf("%s: %w", configPath(dataDir), err)
	}
	if fc.Version != 1 {
		return fc, fmt.Errorf("%s: config version %d is not supported", configPath(dataDir), fc.Version)
	}
	return fc, nil
}
