package controlplane_test

import (
	"fmt"

	"github.com/gridmesh/gridmesh/controlplane"
)

func ExampleParseConfig() {
	_, err := controlplane.ParseConfig("meshd.yaml", []byte(`
services:
  - name: trading
    versions: [{name: v1}]
    routes:
      - split: [{version: v1, weight: 90}, {version: v2, weight: 10}]
`))
	fmt.Println(err)
	// Output:
	// controlplane: meshd.yaml refused: line 6: services[0].routes[0].split[1].version: "v2" is not a version of this service; declare it under versions
}

func ExampleBuildSnapshot() {
	cfg := &controlplane.Config{Services: []controlplane.Service{{Name: "trading"}}}
	snap, err := controlplane.BuildSnapshot(cfg, []controlplane.Endpoint{
		{Service: "trading", Address: "10.0.0.7:8443", SPIFFEID: "spiffe://rec.example/trading"},
	})
	if err != nil {
		panic(err)
	}
	for _, l := range snap.Listeners {
		fmt.Println(l.GetName())
	}
	// Output:
	// grpc/server/rec.example/trading?xds.resource.listening_address=10.0.0.7:8443
	// trading
}
