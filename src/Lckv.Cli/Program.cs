using Lckv.Cli;
using Lckv.Diagnostics;
using Lckv.Numerics;

// the kernels use only the cores other processes leave (Linux; off with LCKV_CORE_MONITOR=0)
WorkerPool.Shared.Cores = CoreMonitor.TryCreate();
return Cli.Run(args);
