/** Row shapes of the /orrery/api endpoints (see kernel_ext/lab/views.py). */

export interface ICell {
  notebook: string;
  cell_id: string;
  execution_count: number | null;
}

/** Every endpoint answers `connected: false` with a reason instead of an HTTP error. */
export interface IConnected {
  connected: boolean;
  reason?: string;
  address?: string;
  /** The kernel asked for (`?kernel=ID`): `followed` when the answer is its own cluster. */
  kernel?: IKernelAnswer | null;
}

export interface IKernelAnswer {
  id: string;
  cluster_address: string | null;
  notebook: string;
  followed: boolean;
}

export interface INode {
  node_id: string;
  state: string;
  node_ip: string;
  is_head_node: boolean;
  resources_total: Record<string, number>;
  resources_available?: Record<string, number>;
  object_store?: { used_bytes: number; capacity_bytes: number; num_objects: number; spilled_objects: number };
  memory_used_bytes?: number | null;
  memory_total_bytes?: number | null;
  hostname: string;
}

export interface ITask {
  task_id: string;
  name: string;
  type: string;
  state: string;
  node_id: string | null;
  cell: ICell | null;
  cell_id: string | null;
  error_type?: string | null;
  error_message?: string | null;
  worker_id?: string | null;
  start_time?: number | null;
  end_time?: number | null;
}

export interface IActor {
  actor_id: string;
  class_name: string;
  state: string;
  name: string;
  node_id: string | null;
  pid: number | null;
  num_restarts: number;
  cell: ICell | null;
}

export interface IPlacementGroup {
  placement_group_id?: string;
  name?: string;
  strategy?: string;
  state?: string;
}

export interface IObject {
  object_id: string;
  size_bytes: number | null;
  owner?: string;
  reference_kinds?: string[] | string;
  spilled?: boolean;
  node_id?: string;
  cell: ICell | null;
}

export interface IMetrics extends IConnected {
  cpu?: { used: number; total: number };
  gpu?: { used: number; total: number };
  object_store?: { used_bytes: number; capacity_bytes: number; num_objects: number };
  nodes?: number;
}

/** One refresh of the sidebar: every list, or why there is none. */
export interface ISnapshot {
  connected: boolean;
  reason: string;
  address: string;
  kernel: IKernelAnswer | null;
  nodes: INode[];
  tasks: ITask[];
  actors: IActor[];
  placementGroups: IPlacementGroup[];
  objects: IObject[];
}
