// Package pb holds the generated protobuf code for the custody ledger's
// command and snapshot encodings. Do not edit ledger.pb.go by hand: change
// ledger.proto and run `go generate ./generations/pb` (needs protoc 3.21+
// and protoc-gen-go, e.g. /usr/bin/protoc and $(go env GOPATH)/bin/protoc-gen-go).
package pb

//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative ledger.proto
