package main

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// ---- control API ----

type diskInfo struct {
	Key      int32  `json:"key"`
	FileName string `json:"file_name"`
	FlatPath string `json:"flat_path"`
	Capacity int64  `json:"capacity"`
}

func (h *harness) control(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	h.mu.Lock()
	defer h.mu.Unlock()
	switch strings.TrimPrefix(r.URL.Path, "/vmpump/") {
	case "info":
		h.mu.Unlock()
		info := h.info()
		h.mu.Lock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(info)
	case "tools":
		vm, ok := findByName("VirtualMachine", q.Get("vm")).(*simulator.VirtualMachine)
		if !ok {
			http.Error(w, "no such vm", http.StatusNotFound)
			return
		}
		running := q.Get("running") == "1"
		family := q.Get("family")
		simulator.Map.WithLock(vm, func() {
			status, tools := types.VirtualMachineToolsRunningStatusGuestToolsNotRunning, types.VirtualMachineToolsStatusToolsNotRunning
			if running {
				status, tools = types.VirtualMachineToolsRunningStatusGuestToolsRunning, types.VirtualMachineToolsStatusToolsOk
			}
			vm.Guest.ToolsRunningStatus = string(status)
			vm.Guest.ToolsStatus = tools
			vm.Guest.ToolsVersion = "12352"
			vm.Guest.ToolsVersionStatus2 = string(types.VirtualMachineToolsVersionStatusGuestToolsCurrent)
			if family != "" {
				vm.Guest.GuestFamily = family
			}
			if vm.Summary.Guest != nil {
				vm.Summary.Guest.ToolsRunningStatus = vm.Guest.ToolsRunningStatus
				vm.Summary.Guest.ToolsStatus = tools
				vm.Summary.Guest.ToolsVersionStatus2 = vm.Guest.ToolsVersionStatus2
			}
		})
	case "quiesce-fail":
		h.quiesceFail[q.Get("vm")] = q.Get("fail") == "1"
	case "retrieve-page":
		h.retrievePage, _ = strconv.Atoi(q.Get("objects"))
	case "cbt-lie":
		h.cbtLie = q.Get("mode")
	case "latency":
		ms, _ := strconv.ParseInt(q.Get("ms"), 10, 64)
		h.latencyMs[q.Get("datastore")] = ms
	case "host-cpu":
		v, _ := strconv.ParseInt(q.Get("hundredths"), 10, 64)
		h.hostCPU[q.Get("host")] = v
	default:
		http.Error(w, "unknown control", http.StatusNotFound)
		return
	}
}

func (h *harness) info() map[string]interface{} {
	datastores := map[string]string{}
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		datastores[ds.Name] = ds.Info.GetDatastoreInfo().Url
	}
	vms := map[string][]diskInfo{}
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		var disks []diskInfo
		simulator.Map.WithLock(vm, func() {
			for _, d := range vm.Config.Hardware.Device {
				if disk, ok := d.(*types.VirtualDisk); ok {
					name := diskFileName(disk)
					disks = append(disks, diskInfo{disk.Key, name, flatPath(name), disk.CapacityInBytes})
				}
			}
		})
		vms[vm.Name] = disks
	}
	return map[string]interface{}{"datastores": datastores, "vms": vms}
}
