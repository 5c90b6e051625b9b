// Command etcd is etcd's server, unchanged: the same entry point as go.etcd.io/etcd/server/v3's
// main.go, in a module of our own so that it builds from the Go module proxy.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
