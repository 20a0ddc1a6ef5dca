package main

import (
	"fmt"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// ---- performance ----

type perfRequest struct {
	QuerySpec []struct {
		Entity   string `xml:"entity"`
		MetricID []struct {
			CounterID int32  `xml:"counterId"`
			Instance  string `xml:"instance"`
		} `xml:"metricId"`
		IntervalID int32 `xml:"intervalId"`
	} `xml:"querySpec"`
}

func (h *harness) queryPerf(w http.ResponseWriter, body []byte) {
	var req perfRequest
	if err := decodeMethod(body, "QueryPerf", &req); err != nil {
		writeFault(w, "InvalidRequest", err.Error(), "")
		return
	}
	var b strings.Builder
	b.WriteString(`<QueryPerfResponse xmlns="urn:vim25">`)
	now := time.Now().UTC().Format(time.RFC3339)
	for _, spec := range req.QuerySpec {
		host, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "HostSystem", Value: spec.Entity}).(*simulator.HostSystem)
		if !ok {
			continue
		}
		interval := spec.IntervalID
		if interval == 0 {
			interval = 20
		}
		fmt.Fprintf(&b, `<returnval xsi:type="PerfEntityMetric"><entity type="HostSystem">%s</entity>`, host.Self.Value)
		fmt.Fprintf(&b, `<sampleInfo><timestamp>%s</timestamp><interval>%d</interval></sampleInfo>`, now, interval)
		for _, metric := range spec.MetricID {
			switch h.counterIDs[metric.CounterID] {
			case "datastore.totalReadLatency.average", "datastore.maxTotalLatency.latest":
				for _, ref := range host.Datastore {
					ds, ok := simulator.Map.Get(ref).(*simulator.Datastore)
					if !ok {
						continue
					}
					h.mu.Lock()
					ms := h.latencyMs[ds.Name]
					h.mu.Unlock()
					writeSeries(&b, metric.CounterID, path.Base(ds.Info.GetDatastoreInfo().Url), ms)
				}
			case "cpu.usage.average":
				h.mu.Lock()
				cpu := h.hostCPU[host.Name]
				h.mu.Unlock()
				writeSeries(&b, metric.CounterID, "", cpu)
			}
		}
		b.WriteString(`</returnval>`)
	}
	b.WriteString(`</QueryPerfResponse>`)
	writeBody(w, http.StatusOK, b.String())
}

func writeSeries(b *strings.Builder, counter int32, instance string, value int64) {
	fmt.Fprintf(b, `<value xsi:type="PerfMetricIntSeries"><id><counterId>%d</counterId><instance>%s</instance></id><value>%d</value></value>`,
		counter, xmlEscape(instance), value)
}
