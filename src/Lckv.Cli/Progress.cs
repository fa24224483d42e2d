using Spectre.Console;

namespace Lckv.Cli;

/// <summary>A progress bar on a terminal, plain lines (at most every few seconds) otherwise.</summary>
public static class Progress
{
    public static T Run<T>(string label, Func<Action<int, int>, T> work, TextWriter stderr)
    {
        bool terminal = !Console.IsErrorRedirected && ReferenceEquals(stderr, Console.Error);
        if (terminal)
        {
            T result = default!;
            var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
            console.Progress().AutoClear(true).Start(ctx =>
            {
                var task = ctx.AddTask(label, maxValue: 1);
                result = work((done, total) => { task.MaxValue = total; task.Value = done; });
            });
            return result;
        }
        var last = System.Diagnostics.Stopwatch.StartNew();
        return work((done, total) =>
        {
            if (last.Elapsed.TotalSeconds < 5 && done != total) return;
            stderr.WriteLine($"{label}: {done}/{total}");
            last.Restart();
        });
    }
}
