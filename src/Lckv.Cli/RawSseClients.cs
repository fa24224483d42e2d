using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace Lckv.Cli;

/// <summary>
/// bench serve's streaming clients at the least cost a client can have: one thread serves every connection (raw
/// HTTP/1.1 over sockets, polled together), so a step's tokens cost one wake of the client side rather than one per
/// client, and each event is read in place with <see cref="Utf8JsonReader"/>. Without streaming, each client reads
/// its whole answer (chunked, as the server sends it) and takes every token's time as the answer's.
/// </summary>
internal static class RawSseClients
{
    /// <summary>Every prompt at once as a greedy /v1/completions request of gen tokens, streamed, or (stream false)
    /// answered whole.</summary>
    public static ServeBenchCommand.ClientRound Round(Uri address, int[][] prompts, int gen, bool stream = true)
    {
        var clock = Stopwatch.StartNew();
        var conns = new Connection[prompts.Length];
        var bySocket = new Dictionary<Socket, Connection>();
        try
        {
            for (int i = 0; i < prompts.Length; i++)
            {
                conns[i] = new Connection(address, prompts[i], gen, stream, clock);
                if (!conns[i].Done && conns[i].Socket is { } s) bySocket[s] = conns[i];
            }
            var ready = new List<Socket>(prompts.Length);
            var buffer = new byte[65536];
            while (bySocket.Count > 0)
            {
                ready.Clear();
                ready.AddRange(bySocket.Keys);
                Socket.Select(ready, null, null, 30_000_000);
                if (ready.Count == 0)
                {
                    foreach (var c in bySocket.Values) c.Fail("no data for 30 s");
                    break;
                }
                double now = clock.Elapsed.TotalMilliseconds;
                foreach (var s in ready)
                {
                    var c = bySocket[s];
                    int read;
                    try { read = s.Receive(buffer); }
                    catch (SocketException e) { read = 0; c.Fail(e.Message); }
                    if (read == 0) c.Fail("the server closed the connection");
                    else c.Received(buffer.AsSpan(0, read), now);
                    if (c.Done) bySocket.Remove(s);
                }
            }
        }
        finally
        {
            foreach (var c in conns) c?.Socket?.Dispose();
        }
        return new ServeBenchCommand.ClientRound(clock.Elapsed.TotalMilliseconds, 0, conns.Select(c => c.Result()).ToArray());
    }

    private sealed class Connection
    {
        private readonly Stopwatch _clock;
        private readonly double _start;
        private readonly List<double> _gaps;
        private readonly StringBuilder _text = new();
        private readonly bool _stream;
        private byte[] _raw = new byte[16384]; // bytes received and not yet taken (headers, chunk framing)
        private int _rawLength;
        private byte[] _events = new byte[16384]; // the body, de-chunked, not yet split into events
        private int _eventsLength;
        private bool _headersRead;
        private int _chunkLeft = -1; // data bytes left in the current chunk (+2 for its CRLF); -1 before a size line
        private int _tokens;
        private double _first = -1, _last, _end;
        private string? _error;

        public Connection(Uri address, int[] prompt, int gen, bool stream, Stopwatch clock)
        {
            _clock = clock;
            _stream = stream;
            _gaps = new List<double>(gen);
            _start = clock.Elapsed.TotalMilliseconds;
            byte[] body = stream
                ? JsonSerializer.SerializeToUtf8Bytes(new { prompt, max_tokens = gen, temperature = 0, stream = true, stream_options = new { include_usage = true } })
                : JsonSerializer.SerializeToUtf8Bytes(new { prompt, max_tokens = gen, temperature = 0 });
            byte[] head = Encoding.ASCII.GetBytes($"POST /v1/completions HTTP/1.1\r\nHost: {address.Authority}\r\nContent-Type: application/json\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n");
            try
            {
                var ip = address.Host == "localhost" ? IPAddress.Loopback : IPAddress.Parse(address.Host);
                var socket = new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                Socket = socket;
                socket.Connect(new IPEndPoint(ip, address.Port));
                socket.Send([.. head, .. body]);
            }
            catch (SocketException e) { Fail(e.Message); }
        }

        public Socket? Socket { get; }
        public bool Done { get; private set; }

        public void Fail(string message)
        {
            if (Done) return;
            _error ??= message;
            Done = true;
        }

        public ServeBenchCommand.ClientRun Result() => _error is not null
            ? new ServeBenchCommand.ClientRun("", 0, 0, 0, _gaps, 0, _error)
            : new ServeBenchCommand.ClientRun(_text.ToString(), _tokens, _first < 0 ? 0 : _first - _start, _first, _gaps, _end, null);

        public void Received(ReadOnlySpan<byte> data, double now)
        {
            if (Done) return;
            Append(ref _raw, ref _rawLength, data);
            int at = 0;
            if (!_headersRead)
            {
                int end = _raw.AsSpan(0, _rawLength).IndexOf("\r\n\r\n"u8);
                if (end < 0) return;
                string headers = Encoding.ASCII.GetString(_raw, 0, end);
                if (!headers.StartsWith("HTTP/1.1 200", StringComparison.Ordinal))
                {
                    Fail($"{headers.Split("\r\n")[0]}: {Encoding.UTF8.GetString(_raw, end + 4, _rawLength - end - 4)}");
                    return;
                }
                if (!headers.Contains("transfer-encoding: chunked", StringComparison.OrdinalIgnoreCase)) { Fail("the response is not chunked"); return; }
                _headersRead = true;
                at = end + 4;
            }
            // de-chunk what has arrived
            while (at < _rawLength)
            {
                if (_chunkLeft < 0)
                {
                    int eol = _raw.AsSpan(at, _rawLength - at).IndexOf("\r\n"u8);
                    if (eol < 0) break;
                    int size = int.Parse(Encoding.ASCII.GetString(_raw, at, eol).Split(';')[0], System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture);
                    at += eol + 2;
                    if (size == 0)
                    {
                        _end = now;
                        Done = true;
                        break;
                    }
                    _chunkLeft = size + 2;
                }
                int take = Math.Min(_chunkLeft, _rawLength - at);
                int payload = Math.Max(0, Math.Min(take, _chunkLeft - 2)); // the chunk's data, not its closing CRLF
                Append(ref _events, ref _eventsLength, _raw.AsSpan(at, payload));
                at += take;
                _chunkLeft -= take;
                if (_chunkLeft == 0) _chunkLeft = -1;
            }
            _raw.AsSpan(at, _rawLength - at).CopyTo(_raw);
            _rawLength -= at;
            if (!_stream)
            {
                if (Done) Answered(now);
                return;
            }
            // whole events
            int used = 0;
            while (_events.AsSpan(used, _eventsLength - used).IndexOf("\n\n"u8) is var end and >= 0)
            {
                var e = _events.AsSpan(used, end);
                used += end + 2;
                if (!e.StartsWith("data: "u8) || e[6..].SequenceEqual("[DONE]"u8)) continue;
                if (!ServeBenchCommand.ReadEvent(e[6..], _text, ref _tokens, ref _error)) continue;
                if (_first < 0) _first = now;
                else _gaps.Add(now - _last);
                _last = now;
            }
            _events.AsSpan(used, _eventsLength - used).CopyTo(_events);
            _eventsLength -= used;
            if (_error is not null) Done = true;
        }

        // the whole answer has arrived: its text and completion tokens, every token at once
        private void Answered(double now)
        {
            Done = true;
            ServeBenchCommand.ReadEvent(_events.AsSpan(0, _eventsLength), _text, ref _tokens, ref _error);
            _first = _last = _end = now;
        }

        private static void Append(ref byte[] buffer, ref int length, ReadOnlySpan<byte> data)
        {
            if (length + data.Length > buffer.Length) Array.Resize(ref buffer, Math.Max(buffer.Length * 2, length + data.Length));
            data.CopyTo(buffer.AsSpan(length));
            length += data.Length;
        }
    }
}
