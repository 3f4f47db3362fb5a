package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// buildVersion is what `p2pkey version` prints: the module version and the
// VCS commit the binary was built from, as the Go toolchain recorded them.
type buildVersion struct {
	Module   string `json:"module"`
	Version  string `json:"version"`
	Commit   string `json:"commit,omitempty"`
	Time     string `json:"commit_time,omitempty"`
	Modified bool   `json:"modified"`
	Go       string `json:"go"`
}

// readVersion reads the build info embedded in the binary. A binary built
// from a checkout (go build) has version "(devel)" and the commit; one
// installed with go install MODULE@VERSION has the version and no commit.
func readVersion() buildVersion {
	v := buildVersion{Module: "github.com/p2pkey/p2pkey", Version: "(unknown)", Go: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	if bi.Main.Path != "" {
		v.Module = bi.Main.Path
	}
	if bi.Main.Version != "" {
		v.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

// String is the one-line form: "p2pkey (devel) commit 41e1947… (modified), go1.26".
func (v buildVersion) String() string {
	s := "p2pkey " + v.Version
	if v.Commit != "" {
		s += " commit " + v.Commit
		if v.Modified {
			s += " (modified)"
		}
	} else {
		s += " commit unknown (built without VCS stamping, e.g. -buildvcs=false)"
	}
	return s + ", " + v.Go
}

func newVersionCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "version [--json]",
		Short: "Print the module version and the commit this binary was built from",
		Long: `version prints the p2pkey module version and the VCS commit the binary was
built from, as recorded by the Go toolchain (runtime/debug.ReadBuildInfo).
A binary built from a checkout says "(devel)" and the commit, with
"(modified)" when the checkout had uncommitted changes; one installed with
'go install github.com/p2pkey/p2pkey/cmd/p2pkey@VERSION' says the version.
'p2pkey --version' prints the same line.

--json prints {module, version, commit, commit_time, modified, go}.`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			v := readVersion()
			if g.jsonOut {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintln(cmd.OutOrStdout(), v)
			return nil
		},
	}
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	return cmd
}
